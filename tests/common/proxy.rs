//! A fault-injecting HTTP/1.1 proxy on loopback, in front of the S3 server: it passes
//! requests on, delays the answers, answers 5xx itself, resets connections (before or after
//! the server answered), or stops listening altogether (server down). The fault can be
//! switched while walseal and PostgreSQL run, for every request or for a few chosen ones.
//!
//! Plain std threads: one acceptor, one thread per client connection, a fresh upstream
//! connection per request. It understands just enough HTTP (Content-Length and chunked
//! bodies, HEAD, 204/304) to forward what `object_store` and the S3 server exchange.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward the request and the answer unchanged.
    Pass,
    /// Forward the request, then hold the server's answer back this long.
    Delay(Duration),
    /// Answer with this HTTP status without forwarding the request.
    Status(u16),
    /// Read the request, then reset the connection (TCP RST); nothing reaches the server.
    Reset,
    /// Forward the request, read the server's full answer, then close the client connection
    /// without passing the answer on (the server did the work, the client never hears).
    CloseAfterUpstream,
    /// As `CloseAfterUpstream`, but with a TCP RST instead of an orderly close.
    ResetAfterUpstream,
    /// Server down: stop listening (connections are refused) and close open connections.
    Refuse,
}

/// A fault for some requests only: among the requests that match (`method`, a substring of
/// the request target), the first `skip` pass, the next `times` get `fault`, later ones pass.
/// A rule that hands out `Refuse` makes the proxy refuse everything from then on.
#[derive(Debug, Clone)]
pub struct Rule {
    pub fault: Fault,
    pub method: Option<String>,
    pub path_contains: Option<String>,
    pub skip: usize,
    pub times: usize,
}

impl Rule {
    /// `fault` for the next `times` requests.
    pub fn new(fault: Fault, times: usize) -> Rule {
        Rule {
            fault,
            method: None,
            path_contains: None,
            skip: 0,
            times,
        }
    }
    /// Only requests with this method.
    pub fn method(mut self, m: &str) -> Rule {
        self.method = Some(m.to_string());
        self
    }
    /// Only requests whose target contains `s`.
    pub fn path(mut self, s: &str) -> Rule {
        self.path_contains = Some(s.to_string());
        self
    }
    /// Let the first `n` matching requests pass.
    pub fn skip(mut self, n: usize) -> Rule {
        self.skip = n;
        self
    }
    fn matches(&self, method: &str, target: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| target.contains(p))
    }
}

/// One request the proxy handled.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// What was done to it.
    pub fault: Fault,
    /// The status the server answered, if the request reached it.
    pub upstream_status: Option<u16>,
}

struct State {
    standing: Fault,
    rule: Option<Rule>,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
}

impl Shared {
    fn refusing(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.state.lock().unwrap().standing == Fault::Refuse
    }

    /// The fault for this request, consuming the rule's budget.
    fn decide(&self, method: &str, target: &str) -> Fault {
        let mut st = self.state.lock().unwrap();
        let standing = st.standing;
        let Some(rule) = st.rule.as_mut() else {
            return standing;
        };
        if !rule.matches(method, target) {
            return standing;
        }
        if rule.skip > 0 {
            rule.skip -= 1;
            return standing;
        }
        if rule.times == 0 {
            return standing;
        }
        rule.times -= 1;
        let fault = rule.fault;
        if fault == Fault::Refuse {
            st.standing = Fault::Refuse;
            st.rule = None;
        }
        fault
    }
}

/// The running proxy. Stopped (listener closed, threads joined) on drop.
pub struct Proxy {
    shared: Arc<Shared>,
    port: u16,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 (a free port) for the server at `upstream`
    /// (`http://host:port`), passing everything.
    pub fn start(upstream: &str) -> Proxy {
        let hostport = upstream
            .strip_prefix("http://")
            .unwrap_or(upstream)
            .trim_end_matches('/');
        let upstream: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                standing: Fault::Pass,
                rule: None,
            }),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(&s, listener, port));
        Proxy {
            shared,
            port,
            acceptor: Some(acceptor),
        }
    }

    /// The endpoint to give walseal instead of the server's.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, `fault` for every request (drops any rule).
    pub fn set(&self, fault: Fault) {
        let mut st = self.shared.state.lock().unwrap();
        st.standing = fault;
        st.rule = None;
    }

    /// Every request passes again (and the port is listening again).
    pub fn pass(&self) {
        self.set(Fault::Pass);
        // Wait until the acceptor listens again, so a caller can rely on it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "proxy did not listen again");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A fault for some requests only (replaces any earlier rule); the rest get the standing
    /// fault.
    pub fn inject(&self, rule: Rule) {
        self.shared.state.lock().unwrap().rule = Some(rule);
    }

    /// How many requests of the current rule are still to be faulted (0: used up).
    pub fn rule_left(&self) -> usize {
        self.shared
            .state
            .lock()
            .unwrap()
            .rule
            .as_ref()
            .map_or(0, |r| r.times)
    }

    /// Whether the proxy is refusing connections (server down).
    pub fn is_refusing(&self) -> bool {
        self.shared.refusing()
    }

    /// The requests handled so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Forgets the requests handled so far.
    pub fn clear_seen(&self) {
        self.shared.seen.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener, port: u16) {
    listener.set_nonblocking(true).unwrap();
    let mut listener = Some(listener);
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let refusing = shared.refusing();
        if refusing && listener.is_some() {
            listener = None; // the port now refuses connections
        } else if !refusing && listener.is_none() {
            // std sets SO_REUSEADDR: rebinding works despite connections in TIME_WAIT.
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                l.set_nonblocking(true).unwrap();
                listener = Some(l);
            }
        }
        let accepted = listener.as_ref().and_then(|l| l.accept().ok());
        match accepted {
            Some((stream, _)) => {
                let s = shared.clone();
                conns.push(std::thread::spawn(move || {
                    let _ = serve(&s, stream);
                }));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
        conns.retain(|c| !c.is_finished());
    }
    drop(listener);
    for c in conns {
        let _ = c.join();
    }
}

/// Serves one client connection, request by request (keep-alive).
fn serve(shared: &Shared, client: TcpStream) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut out = client.try_clone()?;
    let mut reader = BufReader::new(client.try_clone()?);
    loop {
        // Idle: wait for the next request, but notice a stop or an outage meanwhile.
        client.set_read_timeout(Some(Duration::from_millis(50)))?;
        while reader.buffer().is_empty() {
            if shared.refusing() {
                return Ok(()); // an outage closes kept-alive connections too
            }
            match client.peek(&mut [0u8; 1]) {
                Ok(0) => return Ok(()),
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        client.set_read_timeout(Some(Duration::from_secs(60)))?;
        let head = read_head(&mut reader)?;
        let (method, target) = request_line(&head);
        let body = read_body(&mut reader, &head, false)?;
        let fault = shared.decide(&method, &target);
        let mut seen = Seen {
            method: method.clone(),
            target,
            fault,
            upstream_status: None,
        };
        let result = handle(shared, fault, &method, &head, &body, &client, &mut out);
        if let Ok(Some(status)) = &result {
            seen.upstream_status = Some(*status);
        }
        shared.seen.lock().unwrap().push(seen);
        match result {
            Ok(_) if matches!(fault, Fault::Pass | Fault::Delay(_) | Fault::Status(_)) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Applies `fault` to one request; returns the server's status if the request reached it.
fn handle(
    shared: &Shared,
    fault: Fault,
    method: &str,
    head: &[u8],
    body: &[u8],
    client: &TcpStream,
    out: &mut TcpStream,
) -> std::io::Result<Option<u16>> {
    match fault {
        Fault::Refuse => {
            let _ = client.shutdown(Shutdown::Both);
            Ok(None)
        }
        Fault::Reset => {
            reset(client);
            Ok(None)
        }
        Fault::Status(code) => {
            let text = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InjectedFault</Code><Message>status {code} injected by the test proxy</Message></Error>"
            );
            let len = if method == "HEAD" { 0 } else { text.len() };
            write!(
                out,
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\nContent-Length: {len}\r\n\r\n"
            )?;
            if method != "HEAD" {
                out.write_all(text.as_bytes())?;
            }
            out.flush()?;
            Ok(None)
        }
        Fault::Pass | Fault::Delay(_) | Fault::CloseAfterUpstream | Fault::ResetAfterUpstream => {
            let (status, response, until_eof) = forward(shared.upstream, method, head, body)?;
            match fault {
                Fault::CloseAfterUpstream => {
                    let _ = client.shutdown(Shutdown::Both);
                    return Ok(Some(status));
                }
                Fault::ResetAfterUpstream => {
                    reset(client);
                    return Ok(Some(status));
                }
                Fault::Delay(d) => sleep_unless_stopped(shared, d),
                _ => {}
            }
            out.write_all(&response)?;
            out.flush()?;
            if until_eof {
                let _ = client.shutdown(Shutdown::Both);
            }
            Ok(Some(status))
        }
    }
}

fn sleep_unless_stopped(shared: &Shared, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
}

/// Closes the connection with a TCP RST (SO_LINGER 0).
fn reset(stream: &TcpStream) {
    // The RST goes out when the connection's last handle is dropped, as the caller does.
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Sends one request to the server on a fresh connection; returns the status, the whole
/// raw response, and whether its body ran until the server closed.
fn forward(
    upstream: SocketAddr,
    method: &str,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>, bool)> {
    let mut up = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    up.write_all(head)?;
    up.write_all(body)?;
    up.flush()?;
    let mut reader = BufReader::new(up);
    loop {
        let head = read_head(&mut reader)?;
        let status = status_code(&head);
        if (100..200).contains(&status) {
            continue; // 100 Continue and friends: the real answer follows
        }
        let no_body = method == "HEAD" || status == 204 || status == 304;
        let until_eof = !no_body && header(&head, "content-length").is_none() && !is_chunked(&head);
        let mut response = head;
        if !no_body {
            response.extend(read_body(&mut reader, &response.clone(), true)?);
        }
        return Ok((status, response, until_eof));
    }
}

/// Reads up to and including the blank line that ends the head.
fn read_head<R: BufRead>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            return Ok(head);
        }
    }
}

/// The raw body bytes (chunk framing included) after `head`. A response without length
/// or chunking (`response`) runs until the server closes.
fn read_body<R: BufRead>(r: &mut R, head: &[u8], response: bool) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if is_chunked(head) {
        loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line)?;
            let text = String::from_utf8_lossy(&line);
            let size_text = text.trim().split(';').next().unwrap_or("").to_string();
            let size = usize::from_str_radix(&size_text, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {text:?}")))?;
            body.extend_from_slice(&line);
            if size == 0 {
                loop {
                    let mut t = Vec::new();
                    r.read_until(b'\n', &mut t)?;
                    body.extend_from_slice(&t);
                    if t == b"\r\n" || t.is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            r.read_exact(&mut body[start..])?;
        }
    }
    match header(head, "content-length") {
        Some(len) => {
            let len: usize = len
                .parse()
                .map_err(|_| std::io::Error::other("bad content-length"))?;
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        }
        None if response => {
            r.read_to_end(&mut body)?;
        }
        None => {}
    }
    Ok(body)
}

fn request_line(head: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.lines().next().unwrap_or("").split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    (method, target)
}

fn status_code(head: &[u8]) -> u16 {
    String::from_utf8_lossy(head)
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn is_chunked(head: &[u8]) -> bool {
    header(head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}
