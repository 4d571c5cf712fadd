pub mod files;
pub mod history;
pub mod redis_link;
pub mod store;
