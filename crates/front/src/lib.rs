pub mod admin;
pub mod http;
pub mod render;
pub mod sio;
pub mod tls;
pub mod ws;
