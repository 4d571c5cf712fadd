//! The application (layer 4 of 5, docs/architecture.md): what the gateway does with an event, whichever
//! front end brought it. Knows the layers below, no front end's socket types.
//!
//! - [`state`]: [`state::AppState`], the application's context, built by `startup` from its parts.
//! - [`auth`], [`policy`]: tokens, and who may use which channel.
//! - [`events`]: admission, arrival and departure, the typed router and the handlers (one file per
//!   capability), and the event proxy's answers carried out.
//! - [`publications`], [`sequence`]: the one path of a channel publication, and its order in a cluster.
//! - Backend hooks: [`proxy`] (the event proxy's client), [`webhooks`], [`delivery`] (the REST API's and
//!   `realtime:emit`'s targets), [`emitter`] (the official Redis emitter), [`ignis_emitter`] (seed 004's),
//!   [`ingress`] (every Redis channel the gateway listens to).

pub mod auth;
pub mod delivery;
pub mod emitter;
pub mod events;
pub mod ignis_emitter;
pub mod ingress;
pub mod policy;
pub mod proxy;
pub mod publications;
pub mod sequence;
pub mod state;
pub mod webhooks;
