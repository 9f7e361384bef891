// Admins: the team's users, their roles, adding a teammate (the generated password is shown once).
import { api, el, errorText, fmtTime, setChildren } from "./common.js";
import { ROLES } from "./contracts.js";

const $ = (id) => document.getElementById(id);

function showError(error) {
  $("users-error").textContent = errorText(error);
  $("users-error").classList.remove("hidden");
}

async function change(name, body) {
  $("users-error").classList.add("hidden");
  try {
    await api(`/api/users/${encodeURIComponent(name)}`, { method: "PATCH", body });
  } catch (error) {
    showError(error);
  }
  await load();
}

function row(user) {
  const role = el(
    "select",
    { "aria-label": `role of ${user.name}` },
    ROLES.map((r) => el("option", { value: r, selected: r === user.role }, r)),
  );
  role.addEventListener("change", () => change(user.name, { role: role.value }));
  return el(
    "tr",
    { dataset: { user: user.name } },
    el("td", {}, user.name),
    el("td", {}, role),
    el("td", {}, user.disabled ? "disabled" : "active"),
    el("td", { className: "small muted" }, fmtTime(user.created_at)),
    el("td", {}, el("button", { type: "button", className: "btn small", onclick: () => change(user.name, { disabled: !user.disabled }) }, user.disabled ? "Enable" : "Disable")),
  );
}

async function load() {
  try {
    setChildren($("users-body"), (await api("/api/users")).map(row));
  } catch (error) {
    showError(error);
  }
}

$("add-user-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("users-error").classList.add("hidden");
  try {
    const created = await api("/api/users", { method: "POST", body: { name: $("new-user-name").value.trim(), role: $("new-user-role").value } });
    const box = $("new-password");
    setChildren(box, `${created.name} can log in with the password `, el("code", { id: "generated-password" }, created.password), " (shown once: pass it on now).");
    box.classList.remove("hidden");
    event.target.reset();
  } catch (error) {
    showError(error);
  }
  await load();
});

load();
