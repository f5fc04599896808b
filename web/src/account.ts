// The sign-in providers' buttons and the account panel: who you are, the providers linked to the
// account (link, unlink) and signing out.

import { api, providers, returnTo, session, signOut, startUrl, type Provider } from "./auth";
import { $, el } from "./dom";

interface Identity {
  provider: string;
  subject: string;
  name: string;
  linked_at: number;
}

let known: Provider[] = [];
const nameOf = (id: string) => known.find((p) => p.id === id)?.name ?? id;

/** One "Continue with …" link per configured provider in the sign-in dialog; none: nothing. */
export async function showProviders(): Promise<void> {
  known = await providers();
  const box = $("#providers");
  box.textContent = "";
  for (const p of known) {
    const a = el("a", { className: "provider", href: startUrl(p.id), textContent: `Continue with ${p.name}` });
    a.dataset.provider = p.id;
    // The page may have moved to another room since: come back to where the player is now.
    a.addEventListener("click", () => (a.href = startUrl(p.id)));
    box.append(a);
  }
  box.hidden = !known.length;
}

const say = (text: string) => ($("#account-msg").textContent = text);

/** Opens the panel; `signedOut` runs after "Sign out". */
export async function openAccount(signedOut: () => void): Promise<void> {
  const dialog = $<HTMLDialogElement>("#account");
  say("");
  $("#signout").onclick = async () => {
    dialog.close();
    await signOut();
    signedOut();
  };
  const s = session();
  $("#account-name").textContent = s?.name ?? "";
  $("#account-username").textContent = s?.member ? `@${s.username ?? ""}` : "guest";
  $("#account-providers").hidden = !s?.member;
  if (!dialog.open) dialog.showModal();
  if (s?.member) await renderIdentities();
}

async function renderIdentities(): Promise<void> {
  const list = $("#account-identities");
  const links = $("#account-links");
  try {
    const [profile, ids] = await Promise.all([
      api<{ username: string; name: string }>("GET", "/api/users/me"),
      api<{ identities: Identity[]; has_password: boolean }>("GET", "/api/auth/identities"),
      known.length ? undefined : providers().then((p) => (known = p)),
    ]);
    $("#account-name").textContent = profile.name;
    $("#account-username").textContent = `@${profile.username}`;
    list.textContent = "";
    links.textContent = "";
    if (ids.has_password) list.append(el("li", {}, "Password"));
    for (const i of ids.identities) {
      const unlink = el("button", { type: "button", className: "link", textContent: "Unlink", onclick: () => void unlinkOne(i.provider) });
      unlink.dataset.unlink = i.provider;
      list.append(el("li", { className: "identity" }, `${nameOf(i.provider)}: ${i.name || i.subject} `, unlink));
    }
    for (const p of known.filter((p) => !ids.identities.some((i) => i.provider === p.id))) {
      const link = el("button", { type: "button", textContent: `Link ${p.name}`, onclick: () => void linkOne(p.id) });
      link.dataset.link = p.id;
      links.append(link);
    }
  } catch (e) {
    say((e as Error).message);
  }
}

/** The server names the account in the flow cookie and gives the provider's address to open. */
async function linkOne(id: string): Promise<void> {
  try {
    const { url } = await api<{ url: string }>("POST", `/api/auth/oauth/${encodeURIComponent(id)}/link?return_to=${encodeURIComponent(returnTo())}`);
    location.href = url;
  } catch (e) {
    say((e as Error).message);
  }
}

async function unlinkOne(id: string): Promise<void> {
  try {
    await api("DELETE", `/api/auth/identities/${encodeURIComponent(id)}`);
    await renderIdentities();
  } catch (e) {
    const code = (e as Error & { code?: string }).code;
    say(code === "last_way_in" ? `${nameOf(id)} is this account's only way in: link another provider first.` : (e as Error).message);
  }
}
