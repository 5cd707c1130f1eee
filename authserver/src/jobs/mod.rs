//! One-shot jobs the binary runs besides `serve`: token cleanup, service-cache cleanup,
//! seeding (`init`), key management and status.

pub mod cache_cleanup;
pub mod cleanup;
pub mod init;
pub mod keys;
pub mod status;
