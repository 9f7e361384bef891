// Login form: POST the name and password, then go where the user was headed (a path on this site only).
import { api, errorText } from "./common.js";

const form = document.getElementById("login-form");

/**
 * Only a path on this site: "/runs/3?x=1", never "//elsewhere", "/\\elsewhere", "https://elsewhere", nor what a
 * browser makes one of (it drops tabs and newlines: "/\t/elsewhere" is "//elsewhere"). The server renders a checked
 * value (app/routers/pages.py safe_next); this checks again, by the URL the browser itself would go to.
 */
function safeNext(value) {
  // eslint-disable-next-line no-control-regex
  if (!value || !value.startsWith("/") || value.startsWith("//") || /[\u0000-\u0020\u007f\\]/.test(value)) {
    return "/";
  }
  try {
    const target = new URL(value, window.location.origin);
    return target.origin === window.location.origin ? target.pathname + target.search + target.hash : "/";
  } catch {
    return "/";
  }
}

// The button is disabled in the page until this module has taken over the form: a click before it would submit the
// form natively, password included.
document.getElementById("login-button").disabled = false;

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const box = document.getElementById("login-error");
  box.classList.add("hidden");
  const button = document.getElementById("login-button");
  button.disabled = true;
  try {
    await api("/api/auth/login", {
      method: "POST",
      body: { name: form.elements.name.value.trim(), password: form.elements.password.value },
    });
    window.location.assign(safeNext(form.dataset.next));
  } catch (error) {
    box.textContent = errorText(error);
    box.classList.remove("hidden");
    button.disabled = false;
  }
});
