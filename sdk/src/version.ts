// The protocol version this SDK speaks: `PROTOCOL_VERSION` of core/src/limits.rs, and the major
// version of the package (scripts/build-sdk checks that the three agree).
export const PROTOCOL_VERSION = 2;
