// Your own profile (any role): your password and your TOTP. Both changes end
// every session of yours, so the page goes back to the login form afterwards.

import {del, get, post, put} from "./api.js";
import {accountName, base64, field, fmtTime, h, yesNo} from "./dom.js";
import {errorLine, heading, onSubmit, section} from "./ui.js";

export async function profilePage(ctx) {
  const me = await get("/api/profile");
  if (!ctx.alive()) return;

  const cur = h("input", {type: "password", name: "current_password", required: true, autocomplete: "current-password"});
  const pw = h("input", {type: "password", name: "new_password", required: true, autocomplete: "new-password"});
  const pw2 = h("input", {type: "password", name: "new_password2", required: true, autocomplete: "new-password"});
  const pwForm = h("form", {class: "form", id: "profile-password"}, accountName(me.name), field("Current password", cur), field("New password", pw), field("Repeat it", pw2),
    errorLine(), h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Change password")));
  onSubmit(pwForm, async () => {
    if (pw.value !== pw2.value) throw new Error("The two new passwords differ.");
    await put("/api/profile/password", {current_password: cur.value, new_password: pw.value});
    ctx.sessionEnded("Password changed: log in with the new one.");
  });

  const totpBody = h("div");
  function showTotp() {
    const current = h("input", {type: "password", name: "current_password", required: true, autocomplete: "current-password"});
    if (me.totp_enabled) {
      const form = h("form", {class: "form"}, accountName(me.name), h("p", {}, "TOTP is on: every login needs a code."),
        field("Current password", current, "Needed to turn TOTP off."), errorLine(),
        h("div", {class: "actions"}, h("button", {type: "submit", class: "danger"}, "Turn TOTP off")));
      onSubmit(form, async () => {
        await del("/api/profile/totp", {current_password: current.value});
        ctx.sessionEnded("TOTP is off: log in again.");
      });
      totpBody.replaceChildren(form);
      return;
    }
    const form = h("form", {class: "form"}, accountName(me.name),
      h("p", {}, "TOTP is off. Turn it on to need a code from an authenticator app at every login."),
      field("Current password", current), errorLine(),
      h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Set up TOTP")));
    onSubmit(form, async () => {
      const enrolment = await post("/api/profile/totp", {current_password: current.value});
      const code = h("input", {name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true, maxlength: 16});
      const confirm = h("form", {class: "form"}, field("Code from the app", code), errorLine(),
        h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Confirm and turn on")));
      onSubmit(confirm, async () => {
        await post("/api/profile/totp/confirm", {code: code.value.replace(/\s/g, "")});
        ctx.sessionEnded("TOTP is on: log in again with a code.");
      });
      totpBody.replaceChildren(h("div", {class: "enrol"},
        h("img", {class: "qr", src: `data:image/svg+xml;base64,${base64(enrolment.qr_svg)}`, alt: "QR code of your TOTP secret",
          width: 200, height: 200}),
        h("div", {}, h("p", {}, "Scan this with your authenticator app, or type the secret:"),
          h("p", {}, h("code", {class: "secret"}, enrolment.secret.replace(/(.{4})(?=.)/g, "$1 "))),
          h("p", {class: "hint"}, "Your sessions end once it is confirmed: log in again with a code."))), confirm);
      code.focus();
    });
    totpBody.replaceChildren(form);
  }
  showTotp();

  ctx.main.append(heading("Your profile"),
    h("dl", {class: "facts"}, h("dt", {}, "Name"), h("dd", {}, me.name), h("dt", {}, "Role"), h("dd", {}, me.role),
      h("dt", {}, "TOTP"), h("dd", {}, yesNo(me.totp_enabled)), h("dt", {}, "Changed"), h("dd", {}, fmtTime(me.updated))),
    h("div", {class: "grid two"}, section("Password", h("p", {class: "hint"}, "Changing it ends every session of yours."), pwForm),
      Object.assign(section("TOTP", totpBody), {id: "profile-totp"})));
}
