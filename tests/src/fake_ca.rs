//! A stand-in CA that serves `GET /v1/ca/bundle` with whatever JSON it is given, so tests can
//! hand `pedm-host-config` bundles the real CA would never sign (tampered, foreign, expired).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// Serves `body` as `GET /v1/ca/bundle` (JSON), 404 for anything else, until the process ends.
pub struct FakeCa {
    pub url: String,
    body: Arc<Mutex<String>>,
}

impl FakeCa {
    pub fn start(body: String) -> FakeCa {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("the listener's address")
        );
        let body = Arc::new(Mutex::new(body));
        let shared = Arc::clone(&body);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req);
                let (status, text) = if head.starts_with("GET /v1/ca/bundle ") {
                    let text = shared.lock().map(|b| b.clone()).unwrap_or_default();
                    ("200 OK", text)
                } else {
                    ("404 Not Found", "{}".to_string())
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        FakeCa { url, body }
    }

    /// Serves `body` from now on.
    pub fn serve(&self, body: String) {
        if let Ok(mut b) = self.body.lock() {
            *b = body;
        }
    }
}
