//! A real SOCKS5 proxy on 127.0.0.1 (RFC 1928 `CONNECT`, with RFC 1929 user/password
//! authentication), recording each destination as the client named it: a host name when the
//! client left name resolution to the proxy (`socks5h`), an IP address otherwise.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running SOCKS5 proxy. Dropping it stops accepting and closes open tunnels.
pub struct SocksProxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for SocksProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for SocksProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocksProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SocksProxy {
    /// Binds 127.0.0.1:0; with `credentials`, clients must authenticate with exactly them.
    pub async fn start(credentials: Option<(String, String)>) -> SocksProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let log = targets.clone();
        let task = tokio::spawn(async move {
            let mut tunnels = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (log, credentials) = (log.clone(), credentials.clone());
                tunnels.spawn(async move {
                    let _ = tunnel(client, credentials, log).await;
                });
            }
        });
        SocksProxy {
            addr,
            targets,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` destinations of the tunnels opened, as the clients named them.
    pub fn targets(&self) -> Vec<String> {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn tunnel(
    mut client: TcpStream,
    credentials: Option<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let refuse = || std::io::Error::other("refused");
    // Greeting: version 5, the methods the client offers.
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await?;
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods).await?;
    let wanted = if credentials.is_some() { 2 } else { 0 };
    if head[0] != 5 || !methods.contains(&wanted) {
        client.write_all(&[5, 0xff]).await?;
        return Err(refuse());
    }
    client.write_all(&[5, wanted]).await?;
    if let Some((user, password)) = credentials {
        let mut version = [0u8; 2];
        client.read_exact(&mut version).await?;
        let mut given_user = vec![0u8; usize::from(version[1])];
        client.read_exact(&mut given_user).await?;
        let mut len = [0u8; 1];
        client.read_exact(&mut len).await?;
        let mut given_password = vec![0u8; usize::from(len[0])];
        client.read_exact(&mut given_password).await?;
        let ok = given_user == user.as_bytes() && given_password == password.as_bytes();
        client.write_all(&[1, if ok { 0 } else { 1 }]).await?;
        if !ok {
            return Err(refuse());
        }
    }
    // Request: version, CONNECT, reserved, address type, address, port.
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    if request[1] != 1 {
        client.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        return Err(refuse());
    }
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            format!("[{}]", Ipv6Addr::from(ip))
        }
        _ => return Err(refuse()),
    };
    let port = client.read_u16().await?;
    let target = format!("{host}:{port}");
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(target.clone());
    let mut upstream = match TcpStream::connect(target.as_str()).await {
        Ok(s) => s,
        Err(e) => {
            client.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
            return Err(e);
        }
    };
    client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
