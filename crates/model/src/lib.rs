//! The model: the gateway's own words, with no I/O (layer 1 of 5, docs/architecture.md). Everything above
//! speaks in these terms; nothing here knows a socket library, Redis, HTTP or a token format.
//!
//! - [`config`]: every setting (environment variables and flags).
//! - [`names`]: room and channel names (`r:<roomId>`, `ch:<channel>`, `u:<userId>`, ...) and id rules.
//! - [`error`]: the error codes and the one error shape of every answer.
//! - [`event`]: the event names, as one typed list (router, metrics and the docs check derive from it).
//! - [`clock`]: every "now", and new ids.
//! - [`id`], [`user`], [`session`]: a client's id, who it is, and what the gateway keeps of it.
//! - [`client`]: [`client::Link`], a connected client whatever carries it.
//! - [`hub`]: the one delivery path ([`hub::Hub::to`]), the one way to join or leave a room, and the
//!   [`hub::Transport`] each front end registers.
//! - [`timers`], [`metrics`], [`stats`]: the node's timer wheel, its counters and its figures.

pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod event;
pub mod hub;
pub mod id;
pub mod metrics;
pub mod names;
pub mod session;
pub mod stats;
pub mod timers;
pub mod user;
