// The status page (status.html): renders GET /api/status, refreshed every 15 s. The answer is
// cached by the server for a few seconds, so refreshing faster would show nothing new.

interface Outbox {
  depth: number;
  oldest_age_secs: number;
}

interface Component {
  state: "up" | "degraded" | "down" | "off";
  detail?: string;
  outbox?: Outbox;
}

type Status = {
  state: Component["state"];
  version: string;
  host: string;
  checked_at: number;
} & Record<(typeof COMPONENTS)[number][0], Component>;

const COMPONENTS = [
  ["rooms", "Rooms"],
  ["directory", "Room directory"],
  ["accounts", "Accounts"],
  ["mongodb", "MongoDB (durable copy)"],
  ["redis", "Redis (presence, shared index)"],
] as const;

const LABELS: Record<Component["state"], string> = {
  up: "up",
  degraded: "degraded",
  down: "down",
  off: "not used here",
};

function el<K extends keyof HTMLElementTagNameMap>(tag: K, text: string, cls?: string) {
  const e = document.createElement(tag);
  e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function render(s: Status) {
  const overall = document.getElementById("overall")!;
  overall.textContent = LABELS[s.state] ?? s.state;
  overall.className = `status state-${s.state}`;
  const body = document.querySelector("#components tbody")!;
  body.replaceChildren(
    ...COMPONENTS.map(([key, label]) => {
      const c = s[key];
      const row = document.createElement("tr");
      let detail = c?.detail ?? "";
      if (c?.outbox && c.outbox.depth > 0 && !detail) {
        detail = `${c.outbox.depth} writes waiting, the oldest for ${c.outbox.oldest_age_secs} s`;
      }
      row.append(
        el("td", label),
        el("td", LABELS[c?.state] ?? "unknown", `state-${c?.state ?? "down"}`),
        el("td", detail),
      );
      return row;
    }),
  );
  document.getElementById("version")!.textContent = `${s.host} ${s.version}`;
  document.getElementById("checked")!.textContent =
    `checked ${new Date(s.checked_at).toLocaleTimeString()}`;
}

async function refresh() {
  try {
    const resp = await fetch("/api/status", { cache: "no-store" });
    render((await resp.json()) as Status);
  } catch {
    const overall = document.getElementById("overall")!;
    overall.textContent = "unreachable";
    overall.className = "status state-down";
  }
}

void refresh();
setInterval(() => void refresh(), 15_000);
