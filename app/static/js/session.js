// The header's "Log out" button, on every page of a logged-in user.
import { api } from "./common.js";

document.getElementById("logout-button")?.addEventListener("click", async () => {
  try {
    await api("/api/auth/logout", { method: "POST" });
  } finally {
    window.location.assign("/login");
  }
});
