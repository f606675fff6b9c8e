//! ember-init's vsock services. For now one: an echo service on [`ECHO_PORT`] that the host uses
//! to check the channel (every byte a connection sends comes back), one thread per connection.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use ember_proto::ECHO_PORT;

/// Listens on the echo port; returns once the listener is up, serving in a thread.
pub fn start_echo() -> io::Result<()> {
    let listener = listen(ECHO_PORT)?;
    std::thread::Builder::new().name("echo".into()).spawn(move || loop {
        match accept(&listener) {
            Ok(conn) => {
                let _ = std::thread::Builder::new().name("echo-conn".into()).spawn(move || echo(conn));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log_error!("vsock echo: accept: {e}");
                return;
            }
        }
    })?;
    Ok(())
}

fn echo(conn: OwnedFd) {
    // A connected AF_VSOCK stream socket reads and writes like any stream; UnixStream is only
    // the std type that wraps a stream fd.
    let mut stream = UnixStream::from(conn);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A fresh AF_VSOCK stream socket and the address (`cid`, `port`) to bind or connect it to.
pub fn socket(cid: u32, port: u32) -> io::Result<(OwnedFd, libc::sockaddr_vm, libc::socklen_t)> {
    // SAFETY: socket() has no memory-safety preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value before the fields are set.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    Ok((sock, addr, std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t))
}

fn listen(port: u32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let (sock, addr, len) = socket(libc::VMADDR_CID_ANY, port)?;
    let fd = sock.as_raw_fd();
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes that outlives the call.
    let r = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a bound socket owned by `sock`.
    if unsafe { libc::listen(fd, 64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: the listener fd is valid; null address arguments are allowed.
    let fd =
        unsafe { libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
