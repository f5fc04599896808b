// The server's clock as seen from here, estimated from Ping/Pong round trips: note batches are
// stamped on the server clock, so senders and listeners need the offset to keep a performance's
// timing.

/** Clock samples kept (and pings in the first burst, one every 250 ms). */
export const CLOCK_SAMPLES = 16;
/** A longer round trip is no clock sample (as `client/src/clock.rs`). */
export const MAX_RTT_MS = 60_000;

/** Estimates server time from Ping/Pong: keeps the sample with the smallest round trip. */
export class Clock {
  /** Server time minus local time (`Date.now()`), in ms. */
  offset = 0;
  private samples: { rtt: number; offset: number }[] = [];

  serverNow(): number {
    return Date.now() + this.offset;
  }

  /** Local time (`Date.now()` scale) of a server time. */
  toLocal(serverTime: number): number {
    return serverTime - this.offset;
  }

  pong(clientTime: number, serverTime: number): void {
    const now = Date.now();
    const rtt = now - clientTime;
    // A Pong from the future, an absurd one or NaN is no sample (the server may be hostile too):
    // a negative round trip would always win, NaN would poison the offset.
    if (!Number.isFinite(rtt) || !Number.isFinite(serverTime) || rtt < 0 || rtt > MAX_RTT_MS) return;
    this.samples.push({ rtt, offset: serverTime + rtt / 2 - now });
    // Sixteen samples: on a jittery path the least delayed one is closest to symmetric.
    if (this.samples.length > CLOCK_SAMPLES) this.samples.shift();
    this.offset = this.samples.reduce((a, b) => (b.rtt < a.rtt ? b : a)).offset;
  }

  /** The fastest round trip kept (NaN before the first Pong). */
  get rtt(): number {
    return this.samples.length ? Math.min(...this.samples.map((s) => s.rtt)) : NaN;
  }

  /** How many Pongs the estimate rests on. */
  get sampleCount(): number {
    return this.samples.length;
  }
}
