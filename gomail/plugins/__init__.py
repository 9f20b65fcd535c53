"""
gomail's plugin drop-in package: C{twisted.plugin.getPlugins} looks here for
L{gomail.interfaces.IGomailPlugin} providers. The built-in plugins live here;
installed packages may ship more in their own C{gomail/plugins/} directory
(found through L{twisted.plugin.pluginPackagePaths}), and the directories in
C{plugins.path} are added at start (L{gomail.extension.loader}).

Only plugin modules belong in this package: each is imported to look for plugins.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []
