"""
Imports every admin route module, so that its L{gomail.admin.routing.api}
declarations join the app (and the OpenAPI document).
"""

from gomail.admin import (  # noqa: F401
    api_admins,
    api_dashboard,
    api_logs,
    api_queue,
    api_system,
    api_usercreds,
    api_users,
)
