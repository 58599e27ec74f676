//! The agent's SSH server: how a renter gets a shell in their instance with a stock OpenSSH
//! client, whatever the image holds (no sshd needed in it). The user name is the instance's id;
//! a key is accepted only if the instance's tenant added it (the server sends each running
//! workload's keys with every heartbeat, so a key added or removed counts from the next beat).
//! A session runs as an exec in the workload's container, as the workload's own user: a login
//! shell, or the command the client asked for, with a terminal when the client asked for one.
//! Files move with SFTP (`scp`, `sftp`): a helper process in the container's mount namespace,
//! as the workload's user (see `sftp`). Local forwarding (`ssh -L`, VS Code Remote) connects
//! from inside the container's network namespace.
//! It serves containers only: on a process-runtime node there is nothing to confine a shell to,
//! so no SSH server runs there.

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::ResizeExecOptions;
use futures_util::StreamExt;
pub use gpucloud_node::ssh_key::AuthorizedKey;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Where one running instance can be reached and who may reach it.
#[derive(Debug, Clone)]
pub struct Target {
    pub container: String,
    /// The container's init on the host: file transfers enter its mount namespace.
    pub pid: i32,
    /// Its tenant's keys, as given by the server.
    pub keys: Vec<String>,
}

type Targets = Arc<Mutex<HashMap<String, Target>>>;

pub struct SshServer {
    port: u16,
    host_key: String,
    targets: Targets,
}

impl SshServer {
    /// Listens on `port` (0: any) on every interface, with the node's host key from
    /// `state_dir/ssh_host_ed25519_key` (made there on first start, readable by its owner only),
    /// running sessions as `user` in the workloads' containers.
    pub fn start(port: u16, state_dir: &Path, user: &str) -> Result<SshServer, String> {
        let key = host_key(&state_dir.join("ssh_host_ed25519_key"))?;
        let host_key = key.public_key().to_openssh().map_err(|e| e.to_string())?;
        let docker = Docker::connect_with_defaults().map_err(|e| format!("docker: {e}"))?;
        let std_listener =
            std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("ssh port {port}: {e}"))?;
        std_listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let port = std_listener.local_addr().map_err(|e| e.to_string())?.port();
        let targets: Targets = Default::default();
        let config = Arc::new(russh::server::Config {
            keys: vec![key],
            // Offer only public-key login; OpenSSH's first "none" attempt is answered at once.
            methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
            auth_rejection_time: std::time::Duration::from_millis(300),
            auth_rejection_time_initial: Some(std::time::Duration::ZERO),
            inactivity_timeout: Some(std::time::Duration::from_secs(3600)),
            keepalive_interval: Some(std::time::Duration::from_secs(30)),
            nodelay: true,
            ..Default::default()
        });
        let mut server = Server { targets: targets.clone(), docker, user: user.to_string() };
        std::thread::Builder::new()
            .name("ssh".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!(error = %e, "ssh: no runtime"),
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => return tracing::error!(error = %e, "ssh: cannot listen"),
                    };
                    if let Err(e) = russh::server::Server::run_on_socket(&mut server, config, &listener).await {
                        tracing::error!(error = %e, "ssh server stopped");
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        tracing::info!(port, "ssh listening (renters reach their containers here, with their tenant's keys)");
        Ok(SshServer { port, host_key, targets })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's public host key (`ssh-ed25519 AAAA...`), for clients' known_hosts.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// The running instances reachable now, by instance id.
    pub fn set_targets(&self, targets: HashMap<String, Target>) {
        *self.targets.lock().unwrap_or_else(|e| e.into_inner()) = targets;
    }
}

/// The key in `path`, or a new ed25519 key written there (0600).
fn host_key(path: &Path) -> Result<PrivateKey, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let seed: [u8; 32] = rand::random();
            let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed));
            let text = key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map_err(|e| e.to_string())?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("creating the ssh host key {}: {e}", path.display()))?;
            f.write_all(text.as_bytes()).map_err(|e| format!("writing the ssh host key {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("reading the ssh host key {}: {e}", path.display())),
    }
}

#[derive(Clone)]
struct Server {
    targets: Targets,
    docker: Docker,
    user: String,
}

impl russh::server::Server for Server {
    type Handler = Connection;
    fn new_client(&mut self, peer: Option<std::net::SocketAddr>) -> Connection {
        Connection { server: self.clone(), peer, login: None, channels: HashMap::new() }
    }
}

/// One client connection.
struct Connection {
    server: Server,
    peer: Option<std::net::SocketAddr>,
    /// The instance logged in to, once a key was accepted for it.
    login: Option<String>,
    channels: HashMap<ChannelId, SessionChannel>,
}

#[derive(Default)]
struct SessionChannel {
    /// The terminal asked for: TERM, columns, rows.
    pty: Option<(String, u32, u32)>,
    env: Vec<String>,
    /// Kept until the channel is put to use: a file transfer reads and writes it as a stream.
    channel: Option<Channel<Msg>>,
    exec: Option<String>,
    stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
}

impl Connection {
    /// The instance's container if `key` is one of its tenant's keys now.
    fn allowed(&self, user: &str, key: &PublicKey) -> Option<String> {
        let targets = self.server.targets.lock().unwrap_or_else(|e| e.into_inner());
        let target = targets.get(user)?;
        let ok =
            target.keys.iter().filter_map(|k| PublicKey::from_openssh(k).ok()).any(|k| k.key_data() == key.key_data());
        ok.then(|| target.container.clone())
    }

    /// Starts `cmd` (a login shell when `None`) in the instance's container on `channel`, and
    /// relays its output and exit status.
    async fn start(
        &mut self,
        channel: ChannelId,
        cmd: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(instance) = self.login.clone() else { return session.channel_failure(channel) };
        let container =
            self.server.targets.lock().unwrap_or_else(|e| e.into_inner()).get(&instance).map(|t| t.container.clone());
        let Some(chan) = self.channels.get_mut(&channel) else { return session.channel_failure(channel) };
        let Some(container) = container else {
            session.channel_failure(channel)?;
            session.extended_data(channel, 1, format!("instance {instance} is not running here any more\r\n"))?;
            return session.close(channel);
        };
        if chan.exec.is_some() {
            return session.channel_failure(channel);
        }
        // Its input comes through `data`; a stream nobody reads would hold the session up.
        chan.channel = None;
        let tty = chan.pty.is_some();
        let mut env = chan.env.clone();
        if let Some((term, _, _)) = &chan.pty {
            env.push(format!("TERM={term}"));
        }
        if let Some(peer) = self.peer {
            env.push(format!("SSH_CLIENT={} {} 22", peer.ip(), peer.port()));
        }
        // The image may have bash or only a POSIX shell; a login shell either way.
        let script = cmd.unwrap_or_else(|| {
            "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi".to_string()
        });
        let docker = &self.server.docker;
        let created = docker
            .create_exec(
                &container,
                CreateExecOptions::<String> {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty),
                    env: Some(env),
                    cmd: Some(vec!["/bin/sh".into(), "-c".into(), script]),
                    user: Some(self.server.user.clone()),
                    ..Default::default()
                },
            )
            .await;
        let exec_id = match created {
            Ok(c) => c.id,
            Err(e) => {
                tracing::warn!(%instance, error = %e, "ssh: exec in the container failed");
                session.channel_failure(channel)?;
                return Ok(());
            }
        };
        let started = docker
            .start_exec(&exec_id, Some(bollard::exec::StartExecOptions { detach: false, tty, output_capacity: None }))
            .await;
        let (mut output, input) = match started {
            Ok(StartExecResults::Attached { output, input }) => (output, input),
            Ok(StartExecResults::Detached) | Err(_) => {
                session.channel_failure(channel)?;
                return Ok(());
            }
        };
        if let Some((_, cols, rows)) = chan.pty {
            resize(docker, &exec_id, cols, rows).await;
        }
        chan.exec = Some(exec_id.clone());
        chan.stdin = Some(input);
        session.channel_success(channel)?;
        tracing::info!(%instance, peer = ?self.peer, tty, "ssh session started");
        let handle = session.handle();
        let docker = docker.clone();
        tokio::spawn(async move {
            while let Some(item) = output.next().await {
                let sent = match item {
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        handle.extended_data(channel, 1, message).await.is_ok()
                    }
                    Ok(out) => handle.data(channel, out.into_bytes()).await.is_ok(),
                    Err(_) => break,
                };
                if !sent {
                    break;
                }
            }
            // The output can end a moment before the engine records the exit.
            let mut code = 255;
            for _ in 0..40 {
                match docker.inspect_exec(&exec_id).await {
                    Ok(i) if i.running != Some(true) => {
                        code = i.exit_code.unwrap_or(255);
                        break;
                    }
                    Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    Err(_) => break,
                }
            }
            let _ = handle.exit_status_request(channel, u32::try_from(code).unwrap_or(255)).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }
}

/// Connects to `host:port` from the network namespace of process `pid` (a container's init).
/// A thread of its own enters the namespace, connects and ends: a socket stays in the namespace
/// it was made in, and no thread the agent goes on using ever leaves the host's.
async fn connect_in_namespace(pid: i32, host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
    if host.is_empty() || host.len() > 255 || host.contains('\0') {
        return Err("not a host name".into());
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| format!("process {pid}: {e}"))?;
    let host = host.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ssh-forward".into())
        .spawn(move || {
            let connected = (|| {
                // Only this thread's network namespace changes, and the thread ends right after.
                crate::sys::enter_namespace(&ns, libc::CLONE_NEWNET)
                    .map_err(|e| format!("entering the container's network: {e}"))?;
                let addrs: Vec<SocketAddr> = if host == "localhost" {
                    vec![(IpAddr::V4(Ipv4Addr::LOCALHOST), port).into(), (IpAddr::V6(Ipv6Addr::LOCALHOST), port).into()]
                } else {
                    (host.as_str(), port).to_socket_addrs().map_err(|e| format!("{host}: {e}"))?.collect()
                };
                let mut last = format!("{host}: no address");
                for addr in addrs {
                    match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = format!("{addr}: {e}"),
                    }
                }
                Err(last)
            })();
            let _ = tx.send(connected);
        })
        .map_err(|e| e.to_string())?;
    let stream = rx.await.map_err(|_| "the forwarding thread ended".to_string())??;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())
}

async fn resize(docker: &Docker, exec: &str, cols: u32, rows: u32) {
    let size = ResizeExecOptions { h: rows.clamp(1, 10_000) as i32, w: cols.clamp(1, 10_000) as i32 };
    if let Err(e) = docker.resize_exec(exec, size).await {
        tracing::debug!(error = %e, "ssh: resizing the terminal");
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        Ok(if self.allowed(user, offer.public_key).is_some() { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if self.allowed(user, key.public_key).is_some() {
            self.login = Some(user.to_string());
            return Ok(Auth::Accept);
        }
        tracing::info!(instance = user, peer = ?self.peer, "ssh: key refused");
        Ok(Auth::reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), SessionChannel { channel: Some(channel), ..Default::default() });
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(c) if c.exec.is_none() => {
                let term: String = term.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
                c.pty = Some((if term.is_empty() { "xterm".into() } else { term }, cols, rows));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // What OpenSSH sends by default (the locale); anything else could change what the
        // container's programs load.
        let allowed = name == "LANG" || name.starts_with("LC_") && name[3..].chars().all(|c| c.is_ascii_uppercase());
        match self.channels.get_mut(&channel) {
            Some(c) if allowed && value.len() <= 256 && !value.contains('\0') && c.env.len() < 32 => {
                c.env.push(format!("{name}={value}"));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.start(channel, None, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(cmd) = std::str::from_utf8(data) else { return session.channel_failure(channel) };
        if cmd.contains('\0') {
            return session.channel_failure(channel);
        }
        self.start(channel, Some(cmd.to_string()), session).await
    }

    /// `ssh -L` (and what VS Code Remote and Jupyter tunnels use): a connection to `host:port`
    /// as the instance's container would make it, from inside its network namespace, so
    /// `localhost` is the container's own and whatever its network may not reach (the host's
    /// services, other tenants' containers) this may not reach either.
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(instance) = self.login.clone() else {
            reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let pid = self.server.targets.lock().unwrap_or_else(|e| e.into_inner()).get(&instance).map(|t| t.pid);
        let (Some(pid), Ok(port)) = (pid.filter(|p| *p > 0), u16::try_from(port_to_connect)) else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        match connect_in_namespace(pid, host_to_connect, port).await {
            Ok(stream) => {
                reply.accept().await;
                tracing::info!(%instance, peer = ?self.peer, port, "ssh: forwarding a connection into the container");
                tokio::spawn(async move {
                    let mut stream = stream;
                    let mut channel = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut channel, &mut stream).await;
                });
            }
            Err(e) => {
                tracing::info!(%instance, host = host_to_connect, port, error = %e, "ssh: forwarding refused");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            tracing::info!(subsystem = name, "ssh: subsystem refused (only sftp is served)");
            return session.channel_failure(channel);
        }
        let Some(instance) = self.login.clone() else { return session.channel_failure(channel) };
        let pid = self.server.targets.lock().unwrap_or_else(|e| e.into_inner()).get(&instance).map(|t| t.pid);
        let stream = self.channels.get_mut(&channel).filter(|c| c.exec.is_none()).and_then(|c| c.channel.take());
        let (Some(pid), Some(stream)) = (pid.filter(|p| *p > 0), stream) else {
            return session.channel_failure(channel);
        };
        let helper = std::env::current_exe().map_err(russh::Error::IO)?;
        let child = tokio::process::Command::new(helper)
            .args(["agent-sftp", "--pid", &pid.to_string(), "--user", &self.server.user])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%instance, error = %e, "ssh: cannot start the file transfer helper");
                return session.channel_failure(channel);
            }
        };
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        tracing::info!(%instance, peer = ?self.peer, "sftp session started");
        let handle = session.handle();
        tokio::spawn(async move {
            let (mut from_client, mut to_client) = tokio::io::split(stream.into_stream());
            let (mut stdin, mut stdout) = (stdin, stdout);
            // The helper sees the end of the client's input only when its stdin is closed
            // (dropped): shutting a pipe down does not close it.
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut stdin).await;
                drop(stdin);
            });
            let _ = tokio::io::copy(&mut stdout, &mut to_client).await;
            up.abort();
            let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(255);
            let _ = handle.exit_status_request(channel, u32::try_from(code).unwrap_or(255)).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(exec) = self.channels.get(&channel).and_then(|c| c.exec.clone()) {
            resize(&self.server.docker, &exec, cols, rows).await;
        }
        Ok(())
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(c) = self.channels.get_mut(&channel)
            && let Some(stdin) = c.stdin.as_mut()
            && stdin.write_all(data).await.is_err()
        {
            c.stdin = None;
        }
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        // The client has no more input: the program sees the end of its stdin. A terminal has
        // no end of input of its own (the engine would drop the whole session): the shell ends
        // when it is told to, as with OpenSSH's sshd.
        let Some(c) = self.channels.get_mut(&channel) else { return Ok(()) };
        if c.pty.is_none()
            && let Some(mut stdin) = c.stdin.take()
        {
            let _ = stdin.shutdown().await;
        }
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_key_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("gpucloud-ssh-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let _ = std::fs::remove_file(&path);
        let a = host_key(&path).unwrap();
        let b = host_key(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
