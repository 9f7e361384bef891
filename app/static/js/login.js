// Login form: POST the name and password, then go where the user was headed (a path on this site only).
import { api, errorText } from "./common.js";

const form = document.getElementById("login-form");

/** Only a path on this site: "/runs/3?x=1", never "//elsewhere" or "https://elsewhere". */
function safeNext(value) {
  return value && value.startsWith("/") && !value.startsWith("//") && !value.startsWith("/\\") ? value : "/";
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
