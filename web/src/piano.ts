// The 88-key keyboard: drawing, lighting keys in a player's colour, and input from the mouse,
// touch, the computer keyboard and Web MIDI devices.

export const LOWEST = 21; // A0
export const HIGHEST = 108; // C8
const BLACK = new Set([1, 3, 6, 8, 10]);

export interface PianoInput {
  press(note: number, velocity: number): void;
  release(note: number): void;
  sustain(down: boolean): void;
}

const NAMES = ["C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B"];
export const noteName = (n: number) => `${NAMES[n % 12]}${Math.floor(n / 12) - 1}`;

// Two rows of the computer keyboard, like a tracker: z-row from C3, q-row from C4.
const LOWER = "zsxdcvgbhnjm,l.;/";
const UPPER = "q2w3er5t6y7ui9o0p[=]";

export class Piano {
  private keys = new Map<number, HTMLElement>();
  private lit = new Map<number, Set<string>>();
  private octaveShift = 0;
  private pointerNotes = new Map<number, number>();

  constructor(
    private root: HTMLElement,
    private input: PianoInput,
  ) {
    this.draw();
    this.bindPointer();
    this.bindKeyboard();
    void this.bindMidi();
  }

  private draw(): void {
    this.root.textContent = "";
    for (let n = LOWEST; n <= HIGHEST; n++) {
      const key = document.createElement("div");
      key.className = BLACK.has(n % 12) ? "key black" : "key white";
      key.dataset.note = String(n);
      key.setAttribute("role", "button");
      key.setAttribute("aria-label", noteName(n));
      this.root.appendChild(key);
      this.keys.set(n, key);
    }
  }

  /** Lights a key for a player (several players may hold one key; the last one shows). */
  light(note: number, who: string, color: string): void {
    const key = this.keys.get(note);
    if (!key) return;
    const set = this.lit.get(note) ?? new Set<string>();
    set.add(who);
    this.lit.set(note, set);
    key.style.background = color;
    key.dataset.litBy = who;
  }

  /** Unlights every key held by anyone but `keep`. */
  unlightOthers(keep: string | undefined): void {
    for (const [note, set] of this.lit) for (const who of [...set]) if (who !== keep) this.unlight(note, who);
  }

  unlight(note: number, who: string): void {
    const key = this.keys.get(note);
    const set = this.lit.get(note);
    if (!key || !set) return;
    set.delete(who);
    if (set.size === 0) {
      key.style.background = "";
      delete key.dataset.litBy;
    }
  }

  private bindPointer(): void {
    const noteAt = (x: number, y: number) => {
      const el = document.elementFromPoint(x, y) as HTMLElement | null;
      const n = Number(el?.dataset?.note);
      return Number.isFinite(n) && n >= LOWEST ? n : undefined;
    };
    this.root.addEventListener("pointerdown", (e) => {
      const note = noteAt(e.clientX, e.clientY);
      if (note === undefined) return;
      e.preventDefault();
      this.root.setPointerCapture(e.pointerId);
      // Velocity from how low on the key it was hit.
      const rect = (e.target as HTMLElement).getBoundingClientRect();
      const velocity = Math.round(40 + 87 * Math.min(1, Math.max(0, (e.clientY - rect.top) / rect.height)));
      this.pointerNotes.set(e.pointerId, note);
      this.input.press(note, velocity);
    });
    this.root.addEventListener("pointermove", (e) => {
      const held = this.pointerNotes.get(e.pointerId);
      if (held === undefined) return;
      const note = noteAt(e.clientX, e.clientY);
      if (note !== undefined && note !== held) {
        this.input.release(held);
        this.input.press(note, 90);
        this.pointerNotes.set(e.pointerId, note);
      }
    });
    const up = (e: PointerEvent) => {
      const held = this.pointerNotes.get(e.pointerId);
      if (held === undefined) return;
      this.pointerNotes.delete(e.pointerId);
      this.input.release(held);
    };
    this.root.addEventListener("pointerup", up);
    this.root.addEventListener("pointercancel", up);
  }

  private bindKeyboard(): void {
    const noteFor = (key: string) => {
      const k = key.toLowerCase();
      const lo = LOWER.indexOf(k);
      if (lo >= 0) return 48 + lo + this.octaveShift * 12;
      const hi = UPPER.indexOf(k);
      if (hi >= 0) return 60 + hi + this.octaveShift * 12;
      return undefined;
    };
    const down = new Set<string>();
    const typing = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement;
      return t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable;
    };
    window.addEventListener("keydown", (e) => {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === " ") {
        e.preventDefault();
        if (!e.repeat) this.input.sustain(true);
        return;
      }
      if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
        this.octaveShift = Math.max(-3, Math.min(3, this.octaveShift + (e.key === "ArrowLeft" ? -1 : 1)));
        return;
      }
      const note = noteFor(e.key);
      if (note === undefined || e.repeat || down.has(e.key.toLowerCase())) return;
      if (note < LOWEST || note > HIGHEST) return;
      down.add(e.key.toLowerCase());
      this.input.press(note, 100);
    });
    window.addEventListener("keyup", (e) => {
      if (e.key === " ") {
        this.input.sustain(false);
        return;
      }
      const k = e.key.toLowerCase();
      if (!down.delete(k)) return;
      const note = noteFor(k);
      if (note !== undefined) this.input.release(note);
    });
  }

  private async bindMidi(): Promise<void> {
    const nav = navigator as Navigator & { requestMIDIAccess?: () => Promise<MIDIAccess> };
    if (!nav.requestMIDIAccess) return;
    try {
      const access = await nav.requestMIDIAccess();
      const attach = () => {
        for (const input of access.inputs.values()) {
          input.onmidimessage = (m) => this.midi(m.data);
        }
      };
      attach();
      access.onstatechange = attach;
    } catch {
      // No permission or no devices: the other inputs still work.
    }
  }

  private midi(data: Uint8Array | null): void {
    if (!data || data.length < 3) return;
    const [status, a, b] = data;
    const cmd = status & 0xf0;
    if (cmd === 0x90 && b > 0) this.input.press(a, b);
    else if (cmd === 0x80 || (cmd === 0x90 && b === 0)) this.input.release(a);
    else if (cmd === 0xb0 && a === 64) this.input.sustain(b >= 64);
  }
}
