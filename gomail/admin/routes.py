"""
Imports every admin route module, so that its L{gomail.admin.routing.api}
declarations join the app (and the OpenAPI document).
"""

from gomail.admin import api_admins, api_dashboard, api_logs, api_system, api_users  # noqa: F401
