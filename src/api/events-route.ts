// Server-sent events: a stream of VM state changes and task updates, one SSE
// event per engine event (event name = its type, data = the JSON event).
import { createRoute, z } from '@hono/zod-openapi';
import type { OpenAPIHono } from '@hono/zod-openapi';
import { streamSSE } from 'hono/streaming';
import type { EngineEvent, VmEngine } from '../vm/index.ts';

const KEEPALIVE_MS = 15_000;

const eventsRoute = createRoute({
  operationId: 'streamEvents',
  method: 'get',
  path: '/events',
  tags: ['events'],
  summary: 'Server-sent events: vm.created, vm.state, vm.deleted, task and copy-job (event name = type, data = the JSON event), and a ping every 15 s',
  responses: { 200: { description: 'an event stream', content: { 'text/event-stream': { schema: z.string() } } } },
});

export function mountEvents(app: OpenAPIHono, engine: VmEngine): void {
  app.openapi(eventsRoute, (c) =>
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
