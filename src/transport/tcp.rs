//! Plain TCP: both halves are the socket itself, shared by an `Arc`.
//!
//! Owns: nothing but the socket. Must not: buffer, copy or lock; the plain path costs what a
//! bare `TcpStream` costs (one dynamic call per read or write on top of the syscall).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{Output, ReadHalf, Transport, WriteHalf};

/// A plain transport over `socket`.
pub(super) fn transport(socket: Arc<TcpStream>) -> Transport {
    Transport {
        input: Box::new(TcpRead(Arc::clone(&socket))),
        output: Output {
            write: Box::new(TcpWrite(Arc::clone(&socket))),
            link: socket,
        },
        certificate_username: None,
    }
}

pub(super) struct TcpRead(pub(super) Arc<TcpStream>);

impl Read for TcpRead {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl ReadHalf for TcpRead {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(timeout)
    }
}

pub(super) struct TcpWrite(pub(super) Arc<TcpStream>);

impl Write for TcpWrite {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteHalf for TcpWrite {
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.set_write_timeout(timeout)
    }

    fn close(&mut self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}
