// The little of a WebSocket the connection uses, so that the browser's, Node 22's global one
// and the `ws` package all fit without the DOM's types in the SDK's public declarations.

export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  // `any` events: each implementation has its own event classes (MessageEvent, ws's events);
  // the connection reads `data` of a message and `code`/`reason` of a close.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onopen: ((ev: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onmessage: ((ev: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onclose: ((ev: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onerror: ((ev: any) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;
