//! Checking an existing `job` table against what the roles need.
