# -*- test-case-name: tests.test_admin_usercreds -*-
"""QR codes of TOTP enrolment URIs, for the terminal (C{gomail user|admin totp}) and the admin API (SVG)."""

from __future__ import annotations

from typing import Any


def qr_code(data: str) -> Any:
    """
    A made C{qrcode.QRCode} holding C{data}. The qrcode package fails on
    some inputs at some error-correction levels (C{ValueError: glog(0)} in
    its Reed-Solomon code, found by fuzzing the admin API with long names):
    the other levels are tried before giving up.
    """
    import qrcode  # only enrolment needs it

    constants = qrcode.constants
    error: ValueError | None = None
    for level in (constants.ERROR_CORRECT_L, constants.ERROR_CORRECT_M, constants.ERROR_CORRECT_Q,
                  constants.ERROR_CORRECT_H):
        code = qrcode.QRCode(border=2, error_correction=level)
        code.add_data(data)
        try:
            code.make(fit=True)
        except ValueError as e:
            error = e
            continue
        return code
    raise ValueError(f"no QR code for this data: {error}")


def qr_svg(data: str) -> str:
    """C{data} as a QR code: an SVG document, as text."""
    from qrcode.image.svg import SvgPathImage

    image = qr_code(data).make_image(image_factory=SvgPathImage)
    return str(image.to_string(encoding="unicode"))
