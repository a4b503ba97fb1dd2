/** Test helpers of the wire layer (`@ferry/core/remote/wire/testing`), for its specs and the services'. */
export * from './wire-fixtures.js';
export * from './tcp-relay.js';
