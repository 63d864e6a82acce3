//! weft-nats-bridge: plugin phases on remote Go workers over NATS (host side).
//!
//! A [`NatsTransport`] is one NATS connection with its own reply multiplexing; a
//! [`NatsPlugin`] turns a phase call into a request/reply on `weft.<plugin>.<phase>` (any
//! worker of the plugin's queue group) and, for the later phases of the same request,
//! `weft.<plugin>.w.<worker>.<phase>` (the worker that answered first). The request goes out as
//! a FlatBuffers `weft.wire.PhaseRequest` built from the request view the engine laid out; the
//! reply's `PhaseResponse` carries mutation records in the ABI format, which the engine validates
//! with `weft_runtime::mutation::decode` like an in-process batch. The log phase is a plain
//! publish. See `docs/architecture.md`, "Remote plugins over NATS".

#[rustfmt::skip]
#[allow(clippy::all, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes, non_camel_case_types)]
#[path = "generated/weft_wire_generated.rs"]
mod generated;

pub mod engine;
pub mod plugin;
pub mod rooms;
pub mod transport;
pub mod view;
pub mod wire;

pub use engine::{DiscoverError, NatsInstance, ServiceInfo, discover};
pub use plugin::{NatsPlugin, NatsPluginOptions, RemoteError, phase_token};
pub use rooms::{RoomMessage, RoomRelay, RoomSubscription};
pub use transport::{ConnectError, NatsAuth, NatsOptions, NatsTls, NatsTransport};
