pub mod adapter;
pub mod bus;
pub mod liveness;
