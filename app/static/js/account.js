// Account page: change one's own password. The server ends every session and starts this one afresh (a new CSRF
// token), so the page reloads after a change.
import { api, errorText } from "./common.js";

const form = document.getElementById("password-form");
const $ = (id) => document.getElementById(id);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const box = $("password-error");
  box.classList.add("hidden");
  const current = $("password-current").value;
  const next = $("password-new").value;
  if (next !== $("password-repeat").value) {
    box.textContent = "The two new passwords differ.";
    box.classList.remove("hidden");
    return;
  }
  $("password-button").disabled = true;
  try {
    await api("/api/auth/password", { method: "POST", body: { current: current || null, new: next } });
    window.location.assign("/account?changed=1");
  } catch (error) {
    box.textContent = errorText(error);
    box.classList.remove("hidden");
    $("password-button").disabled = false;
  }
});

if (new URLSearchParams(window.location.search).get("changed")) $("password-done").classList.remove("hidden");
