//! DNS for mxguard.
//!
//! Two halves, kept apart on purpose:
//!
//! - [`Resolver`]: the one seam through which every DNS question is asked. The
//!   only implementation that touches the network is [`HickoryResolver`]; tests
//!   point it at the loopback lab rather than swapping in mocks, so the bytes on
//!   the wire are real DNS.
//! - [`plan`]: pure MX planning per RFC 5321 §5.1 and RFC 7505 — which hosts a
//!   sender would try, in which order, and the role each plays. No I/O, table
//!   tested.
//!
//! Nothing outside this crate depends on hickory; names cross the boundary as
//! lower-case ASCII strings without the trailing dot.

mod hickory;
pub mod net;
pub mod plan;
mod resolver;

pub use hickory::{HickoryResolver, ResolverSpec, name_server};
pub use resolver::{Answer, LookupError, LookupResult, MxRecord, Resolver};
