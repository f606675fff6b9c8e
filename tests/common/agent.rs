//! A running `ember serve` for the invoke tests, and a small HTTP client for its Unix socket.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::guest_dir;

/// An agent with its own data dir and socket, killed on drop.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub tcp_port: Option<u16>,
    /// Where the agent's stderr goes (appended), if not to the test's.
    pub stderr_file: Option<PathBuf>,
    extra: Vec<String>,
    /// Environment variables the agent (and its VMMs) get.
    env: Vec<(String, String)>,
}

/// A response: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The decoded `X-Amz-Log-Result`.
    pub fn log_tail(&self) -> String {
        let b64 = self.header("x-amz-log-result").expect("X-Amz-Log-Result");
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    }
}

impl Agent {
    /// Starts an agent in a fresh directory named `name` under the temporary directory (a local
    /// filesystem: Unix sockets cannot live on the emulated host's shares).
    pub fn start(name: &str, extra: &[&str]) -> Agent {
        Self::start_with(name, extra, |_| {})
    }

    /// Starts an agent that also listens on a free loopback TCP port (`tcp_port`), for the AWS
    /// SDKs.
    pub fn start_listening(name: &str, extra: &[&str]) -> Agent {
        let mut agent = Self::unstarted(name, extra);
        agent.tcp_port = Some(std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        agent.spawn();
        agent
    }

    /// Starts an agent whose data dir `prepare` has filled first.
    pub fn start_with(name: &str, extra: &[&str], prepare: impl FnOnce(&Path)) -> Agent {
        let mut agent = Self::unstarted(name, extra);
        prepare(&agent.data_dir);
        agent.spawn();
        agent
    }

    /// An agent's directories, fresh, and no agent running yet.
    fn unstarted(name: &str, extra: &[&str]) -> Agent {
        let root = std::env::temp_dir().join(format!("ember-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("data")).unwrap();
        Agent {
            child: Command::new("true").spawn().unwrap(),
            socket: root.join("ember.sock"),
            data_dir: root.join("data"),
            run_dir: root.join("run"),
            tcp_port: None,
            stderr_file: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// Starts the agent process (again) on the same data dir.
    pub fn spawn(&mut self) {
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
        cmd.env("EMBER_GUEST_DIR", guest_dir())
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(["--init-timeout-s", "120"])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::inherit());
        match &self.stderr_file {
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("agent log");
                cmd.stderr(file);
            }
            None => {
                cmd.stderr(Stdio::inherit());
            }
        }
        if let Some(port) = self.tcp_port {
            cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        }
        self.child = cmd.spawn().expect("run ember serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("ember serve exited: {status}");
            }
            assert!(Instant::now() < deadline, "ember serve did not open its socket");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts an agent whose stderr (its log, and its VMMs') goes to a file, for
    /// [`Agent::log`].
    pub fn start_logged(name: &str, extra: &[&str]) -> Agent {
        let mut agent = Self::unstarted(name, extra);
        agent.stderr_file = Some(agent.data_dir.with_file_name("agent.log"));
        agent.spawn();
        agent
    }

    /// [`Agent::start_logged`], with environment variables for the agent and its VMMs.
    pub fn start_logged_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut agent = Self::unstarted(name, extra);
        agent.stderr_file = Some(agent.data_dir.with_file_name("agent.log"));
        agent.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        agent.spawn();
        agent
    }

    /// What the agent wrote to its log so far ([`Agent::start_logged`]).
    pub fn log(&self) -> String {
        self.stderr_file.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Kills the agent with SIGKILL, and checks that it is really gone: its VMMs with it (within
    /// 30 s), and nothing answering on its socket or TCP port, so that an agent started again
    /// next is the one its clients reach.
    pub fn kill9(&mut self) {
        let pid = self.child.id();
        let vmms = children_of(pid);
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alive: Vec<u32> = vmms.iter().copied().filter(|p| is_running(*p)).collect();
            if alive.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the VMMs {alive:?} of the SIGKILLed agent {pid} are still running");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            std::os::unix::net::UnixStream::connect(&self.socket).is_err(),
            "something still answers on the SIGKILLed agent's socket {}",
            self.socket.display()
        );
        if let Some(port) = self.tcp_port {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "something still answers on the SIGKILLed agent's port {port}"
            );
        }
    }

    /// One request on the Unix socket.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
        request(&self.socket, method, path, headers, body).await
    }

    /// CreateFunction with a zip from the guest dir (`functions/<zip>`).
    pub async fn create(
        &self,
        name: &str,
        runtime: &str,
        handler: &str,
        zip: &str,
        extra: serde_json::Value,
    ) -> Response {
        let zip = std::fs::read(guest_dir().join("functions").join(zip)).expect("test function zip (build-guest.sh)");
        let mut body = serde_json::json!({
            "FunctionName": name,
            "Runtime": runtime,
            "Handler": handler,
            "Role": "arn:aws:iam::000000000000:role/test",
            "Code": { "ZipFile": base64::engine::general_purpose::STANDARD.encode(zip) },
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        self.request("POST", "/2015-03-31/functions", &[], serde_json::to_vec(&body).unwrap()).await
    }

    /// Invoke, RequestResponse, with the log tail.
    pub async fn invoke(&self, name: &str, payload: serde_json::Value) -> Response {
        let path = format!("/2015-03-31/functions/{name}/invocations");
        self.request("POST", &path, &[("X-Amz-Log-Type", "Tail")], serde_json::to_vec(&payload).unwrap()).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat_fields(*p).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// Whether process `pid` exists and is not a zombie.
fn is_running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// The state and parent of process `pid`, from `/proc/PID/stat`.
fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command, which is in parentheses and may hold anything.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

/// One HTTP/1.1 request over a Unix socket.
pub async fn request(socket: &Path, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
    // No request of the tests takes this long, even a Python cold start in the emulated host:
    // an agent that does not answer fails the test, with what it was asked.
    let limit = Duration::from_secs(600);
    match tokio::time::timeout(limit, request_once(socket, method, path, headers, body)).await {
        Ok(response) => response,
        Err(_) => panic!("the agent did not answer {method} {path} within {} s", limit.as_secs()),
    }
}

async fn request_once(socket: &Path, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
    let stream = tokio::net::UnixStream::connect(socket).await.expect("connect to the agent");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::from(body))).unwrap()).await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = resp.into_body().collect().await.expect("response body").to_bytes().to_vec();
    Response { status, headers, body }
}
