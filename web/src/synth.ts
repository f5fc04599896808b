// A small WebAudio piano-ish synth: two detuned oscillators per voice with a percussive
// envelope. Notes are scheduled at AudioContext times, so remote players' timing is kept.
// Each source (a participant) has its own sustain pedal.

interface Voice {
  oscs: OscillatorNode[];
  gain: GainNode;
}

const freq = (note: number) => 440 * 2 ** ((note - 69) / 12);

export class Synth {
  readonly ctx: AudioContext;
  private master: GainNode;
  private voices = new Map<string, Voice>();
  private pedal = new Map<string, { down: boolean; held: Set<number> }>();

  constructor() {
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    this.master = this.ctx.createGain();
    this.master.gain.value = 0.25;
    const comp = this.ctx.createDynamicsCompressor();
    this.master.connect(comp).connect(this.ctx.destination);
  }

  /** Browsers start audio suspended until a user gesture. */
  resume(): void {
    if (this.ctx.state !== "running") void this.ctx.resume();
  }

  /** AudioContext time for a local wall-clock time in ms (never in the past). */
  at(localMs: number): number {
    return Math.max(this.ctx.currentTime, this.ctx.currentTime + (localMs - Date.now()) / 1000);
  }

  noteOn(source: string, note: number, velocity: number, when = this.ctx.currentTime): void {
    this.release(source, note, when);
    const gain = this.ctx.createGain();
    const peak = (velocity / 127) ** 1.5;
    gain.gain.setValueAtTime(0, when);
    gain.gain.linearRampToValueAtTime(peak, when + 0.005);
    gain.gain.exponentialRampToValueAtTime(Math.max(peak * 0.3, 0.0001), when + 1.2);
    gain.gain.exponentialRampToValueAtTime(0.0001, when + 6);
    const oscs = [
      ["triangle", 0],
      ["sine", 4],
    ].map(([type, detune]) => {
      const osc = this.ctx.createOscillator();
      osc.type = type as OscillatorType;
      osc.frequency.value = freq(note);
      osc.detune.value = detune as number;
      osc.connect(gain);
      osc.start(when);
      osc.stop(when + 6.1);
      return osc;
    });
    gain.connect(this.master);
    this.voices.set(`${source}:${note}`, { oscs, gain });
  }

  noteOff(source: string, note: number, when = this.ctx.currentTime): void {
    const pedal = this.pedal.get(source);
    if (pedal?.down) {
      pedal.held.add(note);
      return;
    }
    this.release(source, note, when);
  }

  sustain(source: string, down: boolean, when = this.ctx.currentTime): void {
    const pedal = this.pedal.get(source) ?? { down: false, held: new Set<number>() };
    this.pedal.set(source, pedal);
    pedal.down = down;
    if (!down) {
      for (const note of pedal.held) this.release(source, note, when);
      pedal.held.clear();
    }
  }

  /** Releases every voice and pedal of every source but `keep` (notes left sounding when
   * their note-offs were skipped). */
  releaseOthers(keep: string | undefined): void {
    const when = this.ctx.currentTime;
    for (const key of [...this.voices.keys()]) {
      const [source, note] = [key.slice(0, key.lastIndexOf(":")), Number(key.slice(key.lastIndexOf(":") + 1))];
      if (source !== keep) this.release(source, note, when);
    }
    for (const [source, pedal] of this.pedal) if (source !== keep) (pedal.down = false), pedal.held.clear();
  }

  private release(source: string, note: number, when: number): void {
    const key = `${source}:${note}`;
    const v = this.voices.get(key);
    if (!v) return;
    this.voices.delete(key);
    v.gain.gain.cancelScheduledValues(when);
    v.gain.gain.setTargetAtTime(0, when, 0.08);
    for (const o of v.oscs) o.stop(when + 0.6);
  }
}
