//! The cluster store on Redis (see the scaling issue): filled in with the Redis adapter.
