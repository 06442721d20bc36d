//! Netlink work inside another network namespace. A netlink socket (and a tap opened from
//! `/dev/net/tun`) belongs to the namespace of the thread that creates it, so each piece of work
//! runs on a thread of its own that enters the namespace first and then drives rtnetlink on a
//! current-thread tokio runtime. The thread ends with the work: no thread of the process ever
//! returns to, or stays in, a namespace it did not start in.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkMessage,
};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::NetworkError;

/// Which namespace a file names: its nsfs device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

/// How to treat a namespace that is not there.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    /// It must be there: a missing one is an error.
    Required,
    /// Tearing down: a missing namespace, a path that no longer names one, or one that is not
    /// `Some(id)` any more (the path was reused) has nothing of ours left, and the work is
    /// skipped.
    IfStillThere(Option<NetnsId>),
}

#[cfg(test)]
impl NetnsId {
    /// An id no namespace has.
    pub fn for_tests() -> Self {
        Self { dev: 0, ino: 0 }
    }
}

fn tolerant(entry: Entry) -> bool {
    matches!(entry, Entry::IfStillThere(_))
}

/// Enters the namespace at `path` on the calling thread. `Ok(None)`: gone (only with a tolerant
/// `entry`).
fn enter(path: &Path, entry: Entry) -> Result<Option<NetnsId>, NetworkError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && tolerant(entry) => return Ok(None),
        Err(source) => {
            return Err(NetworkError::OpenNetns {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| NetworkError::OpenNetns {
        path: path.to_path_buf(),
        source,
    })?;
    let id = NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Entry::IfStillThere(Some(expected)) = entry
        && expected != id
    {
        tracing::debug!(netns = %path.display(), "the path names another namespace now");
        return Ok(None);
    }
    match setns(&file, CloneFlags::CLONE_NEWNET) {
        Ok(()) => Ok(Some(id)),
        // An unmounted namespace file left behind is a plain file: EINVAL.
        Err(nix::errno::Errno::EINVAL) if tolerant(entry) => Ok(None),
        Err(errno) => Err(NetworkError::EnterNetns {
            path: path.to_path_buf(),
            source: io::Error::from(errno),
        }),
    }
}

/// What a piece of work in a namespace ends with: `None` when a tolerant [`Entry`] found the
/// namespace gone.
pub type Outcome<T> = Result<Option<(NetnsId, T)>, NetworkError>;

/// Runs `work` with a netlink handle of the namespace at `path`, on the calling thread, which
/// enters the namespace for good: call it only on a thread made for it.
pub fn run_here<T, F, Fut>(path: &Path, entry: Entry, work: F) -> Outcome<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let Some(id) = enter(path, entry)? else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetworkError::Socket {
            path: path.to_path_buf(),
            source,
        })?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetworkError::Socket {
                path: path.to_path_buf(),
                source,
            })?;
        let connection = tokio::spawn(connection);
        let result = work(handle).await;
        connection.abort();
        result.map(|value| Some((id, value)))
    })
}

/// Spawns the thread for [`run_here`]; its result arrives on the returned channel.
fn spawn<T, F, Fut>(
    path: PathBuf,
    entry: Entry,
    work: F,
) -> Result<tokio::sync::oneshot::Receiver<Outcome<T>>, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("coffer-netns".into())
        .spawn(move || {
            let _ = tx.send(run_here(&path, entry, work));
        })
        .map_err(NetworkError::Worker)?;
    Ok(rx)
}

/// Runs `work` in the namespace at `path` on a thread of its own and waits for it.
pub async fn run<T, F, Fut>(path: &Path, entry: Entry, work: F) -> Outcome<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    spawn(path.to_path_buf(), entry, work)?
        .await
        .map_err(|_| NetworkError::Worker(io::Error::other("the namespace worker ended early")))?
}

/// Runs `work` in the namespace at `path` on a thread of its own and blocks until it is done: for
/// a caller that cannot await.
pub fn run_blocking<T, F, Fut>(path: PathBuf, entry: Entry, work: F) -> Outcome<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    std::thread::Builder::new()
        .name("coffer-netns".into())
        .spawn(move || run_here(&path, entry, work))
        .map_err(NetworkError::Worker)?
        .join()
        .map_err(|_| NetworkError::Worker(io::Error::other("the namespace worker panicked")))?
}

/// Starts `work` in the namespace at `path` on a thread of its own and does not wait: for
/// best-effort clean-up from `Drop`. Failures are logged.
pub fn run_detached<F, Fut>(path: PathBuf, entry: Entry, work: F)
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), NetworkError>>,
{
    let shown = path.display().to_string();
    let started = std::thread::Builder::new()
        .name("coffer-netns".into())
        .spawn(move || {
            if let Err(err) = run_here(&path, entry, work) {
                tracing::warn!(netns = %path.display(), %err, "network clean-up failed");
            }
        });
    if let Err(err) = started {
        tracing::warn!(netns = %shown, %err, "network clean-up not started");
    }
}

/// The io::Error inside an rtnetlink error (the kernel's errno when it answered with one).
pub fn io_error(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn netlink(op: &'static str, interface: &str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let interface = interface.to_owned();
    move |err| NetworkError::Netlink {
        op,
        interface,
        source: io_error(err),
    }
}

/// Every link of the namespace.
pub async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing links", "*"))
}

/// Every address of the namespace.
pub async fn addresses(handle: &Handle) -> Result<Vec<AddressMessage>, NetworkError> {
    handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing addresses", "*"))
}

/// Every IPv4 and IPv6 route of the namespace, all tables.
pub async fn routes(handle: &Handle) -> Result<Vec<RouteMessage>, NetworkError> {
    let mut all: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing IPv4 routes", "*"))?;
    let v6: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing IPv6 routes", "*"))?;
    all.extend(v6);
    Ok(all)
}

/// The index of link `name`, `None` when there is none.
pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let found = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(err) => {
            let err = io_error(err);
            if err.raw_os_error() == Some(libc::ENODEV) {
                Ok(None)
            } else {
                Err(NetworkError::Netlink {
                    op: "looking up",
                    interface: name.to_owned(),
                    source: err,
                })
            }
        }
    }
}

/// Sets link `index` (`name`) to `mtu` and up. Before that, on a best-effort basis, turns off
/// IPv6 address generation on it: the namespace's own stack has nothing to say on a tap, and a
/// link-local address would make it speak (router and neighbour solicitations) into the guest.
pub async fn configure_tap(
    handle: &Handle,
    index: u32,
    name: &str,
    mtu: u32,
) -> Result<(), NetworkError> {
    let quiet = LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]))
        .build();
    if let Err(err) = handle.link().set(quiet).execute().await {
        // Without IPv6 in the kernel there is nothing to quieten.
        tracing::debug!(interface = name, err = %io_error(err), "IPv6 address generation left on");
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(netlink("setting MTU and up on", name))
}

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: u32 = 0xffff_0000;

/// Whether link `index` has an `ingress` qdisc.
pub async fn has_ingress(handle: &Handle, index: u32, name: &str) -> Result<bool, NetworkError> {
    let qdiscs: Vec<_> = handle
        .qdisc()
        .get()
        .index(index as i32)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing qdiscs of", name))?;
    // The dump may cover every link: match the index here.
    Ok(qdiscs.iter().any(|q| {
        q.header.index == index as i32
            && q.header.parent == TcHandle::INGRESS
            && q.attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == "ingress"))
    }))
}

/// Removes link `index`'s ingress qdisc, and with it its filters; nothing when it has none.
pub async fn remove_ingress(handle: &Handle, index: u32, name: &str) -> Result<(), NetworkError> {
    if !has_ingress(handle, index, name).await? {
        return Ok(());
    }
    let mut del = handle.qdisc().del(index as i32);
    del.message_mut().header.parent = TcHandle::INGRESS;
    del.message_mut().header.handle = TcHandle::from(INGRESS_HANDLE);
    match del.execute().await {
        Ok(()) => Ok(()),
        Err(err) => {
            let err = io_error(err);
            // Gone between the look-up and now: the link went away with its qdisc.
            if matches!(err.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) {
                Ok(())
            } else {
                Err(NetworkError::Netlink {
                    op: "removing the ingress qdisc of",
                    interface: name.to_owned(),
                    source: err,
                })
            }
        }
    }
}

/// Adds an ingress qdisc to link `index`.
pub async fn add_ingress(handle: &Handle, index: u32, name: &str) -> Result<(), NetworkError> {
    handle
        .qdisc()
        .add(index as i32)
        .ingress()
        .execute()
        .await
        .map_err(netlink("adding an ingress qdisc to", name))
}

/// Redirects every frame arriving on link `from` to the egress of link `to`: a u32 filter matching
/// everything (`matchall` is missing from some kernels) with a `mirred egress redirect` action.
pub async fn redirect(
    handle: &Handle,
    from: (u32, &str),
    to: (u32, &str),
) -> Result<(), NetworkError> {
    let what = format!("{} (to {})", from.1, to.1);
    handle
        .traffic_filter(from.0 as i32)
        .add()
        .parent(INGRESS_HANDLE)
        // The protocol is in network byte order, as `tc … protocol all` sends it.
        .protocol((libc::ETH_P_ALL as u16).to_be())
        .redirect(to.0)
        .map_err(netlink("building the redirect filter of", &what))?
        .execute()
        .await
        .map_err(netlink("adding the redirect filter of", &what))
}
