//! The binaries' memory allocator: mimalloc instead of glibc's malloc.
//!
//! A profile of `garivini workers` in low-latency mode found a quarter of
//! its own CPU in glibc's free paths (`_int_free`, `unlink_chunk`,
//! `malloc_consolidate`: every packet and row buffer is allocated and
//! freed per job). A faster allocator under the same processes (gv_bench
//! scenario 4, taken in turn) cut the roles' CPU per job by 15-20 %. The
//! library sets none: a program using it chooses its own.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
