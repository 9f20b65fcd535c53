"""twistd plugin: ``twistd gomail`` (imports gomail.tap only when used)."""

from twisted.application.service import ServiceMaker

gomail = ServiceMaker("gomail", "gomail.tap", "gomail mail server: SMTP intake, relay and HTTP services", "gomail")
