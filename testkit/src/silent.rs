//! A server that accepts every connection and never says a word: a hung
//! gearmand, or a hung database (what a SIGSTOPped server looks like from
//! a client), without touching any real server.

use std::net::TcpListener;

/// Accepts and holds connections, never answering, until the test ends.
pub struct Silent {
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Silent {
    /// Listens on a free loopback port.
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().expect("a bound port").to_string();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => held.push(c),
                    Err(_) => return,
                }
            }
        });
        Silent { addr }
    }
}
