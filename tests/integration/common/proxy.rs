//! A TCP proxy on loopback in front of a NATS server, for one instance's link: the test
//! cuts that link (the instance's connections close and new ones are refused) and restores
//! it, while the other instances keep theirs. It runs on a thread of its own, so the link
//! works whatever the test is waiting for.

use std::{
    net::{Ipv4Addr, TcpListener},
    sync::{Arc, Mutex},
    thread,
};

use tokio::{net::TcpStream, sync::oneshot, task::AbortHandle};

/// The proxied connections, and whether the link is cut. One lock for both, so that a
/// connection accepted while `cut` runs is either refused or closed by it.
#[derive(Default)]
struct Links {
    cut: bool,
    open: Vec<AbortHandle>,
}

/// Forwards 127.0.0.1:`port` to 127.0.0.1:`target`; stops when dropped.
pub struct LinkProxy {
    pub port: u16,
    links: Arc<Mutex<Links>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LinkProxy {
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let links = Arc::new(Mutex::new(Links::default()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let proxied = links.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let client = tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => match accepted {
                            Ok((client, _)) => client,
                            Err(_) => continue,
                        },
                    };
                    let mut links = proxied.lock().expect("proxy lock");
                    if links.cut {
                        // Closed at once: the client's connect attempt fails.
                        continue;
                    }
                    let link = tokio::spawn(async move {
                        let mut client = client;
                        if let Ok(mut server) =
                            TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.open.retain(|open| !open.is_finished());
                    links.open.push(link.abort_handle());
                }
            });
        });
        Self {
            port,
            links,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy (both sides see the socket close) and
    /// refuses new ones until `restore`.
    pub fn cut(&self) {
        let mut links = self.links.lock().expect("proxy lock");
        links.cut = true;
        for link in links.open.drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.links.lock().expect("proxy lock").cut = false;
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
