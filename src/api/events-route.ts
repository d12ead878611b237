// Server-sent events: a stream of VM state changes and task updates, one SSE
// event per engine event (event name = its type, data = the JSON event).
import type { Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { EngineEvent, VmEngine } from '../vm/index.ts';

const KEEPALIVE_MS = 15_000;

export function mountEvents(app: Hono, engine: VmEngine): void {
  app.get('/events', (c) =>
    streamSSE(c, async (stream) => {
      const queue: EngineEvent[] = [];
      let wake: (() => void) | undefined;
      const unsubscribe = engine.events.subscribe((event) => {
        queue.push(event);
        wake?.();
      });
      stream.onAbort(() => {
        unsubscribe();
        wake?.();
      });
      let id = 0;
      await stream.writeSSE({ event: 'hello', data: JSON.stringify({ at: new Date().toISOString() }) });
      while (!stream.aborted) {
        const event = queue.shift();
        if (event) {
          await stream.writeSSE({ event: event.type, data: JSON.stringify(event), id: String(++id) });
          continue;
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, KEEPALIVE_MS);
        });
        wake = undefined;
        if (queue.length === 0 && !stream.aborted) await stream.writeSSE({ event: 'ping', data: '{}' });
      }
      unsubscribe();
    }),
  );
}
