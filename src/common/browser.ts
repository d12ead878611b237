// The part of the common layer that a browser can load (no Node modules):
// errors with stable codes, name validation and timing helpers. The web
// console reaches it through src/client/browser.ts; Node code keeps using
// index.ts, which exports the same modules and the Node-only ones.
export * from './errors.ts';
export * from './names.ts';
export * from './time.ts';
