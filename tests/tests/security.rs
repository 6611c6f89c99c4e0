//! Who may do what: every connection is mutual TLS with certificates of the
//! cluster's CA, and each RPC serves only the roles it names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dfs_auth::Role;
use dfs_proto::pb;
use dfs_proto::pb::chunk_client::ChunkClient;
use dfs_proto::pb::meta_client::MetaClient;
use dfs_tests::{Cluster, Options};
use tonic::Code;

fn cluster() -> Cluster {
    let c = Cluster::start(Options::default());
    assert!(
        c.pki.is_some(),
        "the suite runs with TLS unless DFS_TEST_INSECURE=1"
    );
    c
}

/// The code a call failed with; a connection that could not be made at all
/// (the server refused the handshake) counts as UNAVAILABLE.
async fn meta_call<T>(
    c: &Cluster,
    cert: Option<&str>,
    call: impl AsyncFnOnce(MetaClient<tonic::transport::Channel>) -> Result<T, tonic::Status>,
) -> Result<T, Code> {
    let channel = match c.grpc_channel(&c.meta_addr, Role::Meta, cert).await {
        Ok(ch) => ch,
        Err(_) => return Err(Code::Unavailable),
    };
    call(MetaClient::new(channel)).await.map_err(|s| s.code())
}

async fn node_call<T>(
    c: &Cluster,
    i: usize,
    cert: Option<&str>,
    call: impl AsyncFnOnce(ChunkClient<tonic::transport::Channel>) -> Result<T, tonic::Status>,
) -> Result<T, Code> {
    let channel = match c.grpc_channel(c.node_addr(i), Role::Node, cert).await {
        Ok(ch) => ch,
        Err(_) => return Err(Code::Unavailable),
    };
    call(ChunkClient::new(channel)).await.map_err(|s| s.code())
}

fn denied<T>(r: Result<T, Code>) -> bool {
    r.err() == Some(Code::PermissionDenied)
}

fn not_found<T>(r: Result<T, Code>) -> bool {
    r.err() == Some(Code::NotFound)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn callers_without_a_certificate_are_refused_everywhere() {
    let c = cluster();
    rt().block_on(async {
        let refused = meta_call(&c, None, async |mut m| m.stat_fs(pb::Empty {}).await).await;
        assert!(
            refused.is_err(),
            "meta served a caller without a certificate"
        );
        for i in 0..c.opts.nodes {
            let refused = node_call(&c, i, None, async |mut n| {
                n.read_chunk(pb::ReadChunkRequest {
                    chunk_id: 1,
                    offset: 0,
                    length: 1,
                    token: None,
                })
                .await
            })
            .await;
            assert!(
                refused.is_err(),
                "node {i} served a caller without a certificate"
            );
        }
        // Plaintext gRPC does not even reach a handler.
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", c.meta_addr))
            .unwrap()
            .connect()
            .await;
        if let Ok(ch) = plain {
            assert!(MetaClient::new(ch).stat_fs(pb::Empty {}).await.is_err());
        }
    });
    // The same with the CLI: without certificates it cannot work.
    let out = std::process::Command::new(dfs_tests::bin_dir().join("dfs"))
        .env("DFS_META", &c.meta_addr)
        .args(["--insecure", "--meta-timeout", "2", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // With a client certificate, files work.
    let ok = rt().block_on(meta_call(&c, Some("client"), async |mut m| {
        m.stat_fs(pb::Empty {}).await
    }));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn a_client_certificate_cannot_call_node_or_admin_rpcs() {
    let c = cluster();
    rt().block_on(async {
        let client = Some("client");
        assert!(denied(
            meta_call(&c, client, async |mut m| {
                m.register_node(tokio_stream::iter([pb::RegisterNodeRequest {
                    uuid: "intruder".into(),
                    addr: "127.0.0.1:9".into(),
                    capacity_bytes: 1 << 50,
                    ..Default::default()
                }]))
                .await
            })
            .await
        ));
        assert!(denied(
            meta_call(&c, client, async |mut m| {
                m.heartbeat(pb::HeartbeatRequest {
                    node_id: 1,
                    ..Default::default()
                })
                .await
            })
            .await
        ));
        assert!(denied(
            meta_call(&c, client, async |mut m| {
                m.node_admin(pb::NodeAdminRequest {
                    node: "1".into(),
                    action: "drain".into(),
                })
                .await
            })
            .await
        ));
        assert!(denied(
            meta_call(&c, client, async |mut m| {
                m.fsck(pb::FsckRequest {
                    path: b"/".to_vec(),
                    repair: true,
                })
                .await
            })
            .await
        ));
        // Reading the cluster's health is fine.
        assert!(meta_call(&c, client, async |mut m| {
            m.fsck(pb::FsckRequest {
                path: b"/".to_vec(),
                repair: false,
            })
            .await
        })
        .await
        .is_ok());
        // On a node: clients neither list nor delete chunks.
        assert!(denied(
            node_call(&c, 0, client, async |mut n| {
                n.delete_chunks(pb::DeleteChunksRequest {
                    chunk_ids: vec![1, 2, 3],
                })
                .await
            })
            .await
        ));
        assert!(denied(
            node_call(&c, 0, client, async |mut n| n
                .list_chunks(pb::Empty {})
                .await)
            .await
        ));
        // A node certificate is no file client either.
        assert!(denied(
            meta_call(&c, Some("node0"), async |mut m| {
                m.create(pb::CreateRequest {
                    parent: dfs_proto::ROOT_INO,
                    name: b"x".to_vec(),
                    kind: pb::FileKind::Regular as i32,
                    mode: 0o644,
                    ..Default::default()
                })
                .await
            })
            .await
        ));
    });
    // Nothing changed: no intruder node, nothing draining, no file.
    let nodes = c.dfs_ok(&["--json", "nodes"]);
    assert!(
        !nodes.contains("intruder") && !nodes.contains("127.0.0.1:9"),
        "{nodes}"
    );
    assert!(!nodes.contains("\"draining\":true"), "{nodes}");
    assert_eq!(c.dfs_ok(&["ls", "/"]).trim(), "");
    // The admin certificate (what `dfs` uses here) may drain.
    c.dfs_ok(&["node", "drain", "--no-wait", c.node_addr(0)]);
    c.dfs_ok(&["node", "undrain", c.node_addr(0)]);
}

#[test]
fn a_node_cannot_register_with_another_nodes_uuid() {
    let c = cluster();
    let uuid = std::fs::read_to_string(c.node_data(0).join("node-uuid")).unwrap();
    let before = c.dfs_ok(&["--json", "nodes"]);
    let result = rt().block_on(meta_call(&c, Some("node1"), async |mut m| {
        m.register_node(tokio_stream::iter([pb::RegisterNodeRequest {
            uuid: uuid.trim().to_string(),
            addr: "127.0.0.1:9".into(),
            capacity_bytes: 1 << 50,
            ..Default::default()
        }]))
        .await
    }));
    assert_eq!(result.err(), Some(Code::PermissionDenied));
    // Node 0 keeps its address; nothing points at the impostor's.
    let after = c.dfs_ok(&["--json", "nodes"]);
    assert!(
        after.contains(c.node_addr(0)) && !after.contains("127.0.0.1:9"),
        "{after}"
    );
    assert_eq!(
        before.matches("\"id\"").count(),
        after.matches("\"id\"").count()
    );
    // Nor heartbeat as node 0.
    let node0: serde_json::Value = serde_json::from_str(&after).unwrap();
    let id = node0
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["addr"] == c.node_addr(0))
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let beat = rt().block_on(meta_call(&c, Some("node1"), async |mut m| {
        m.heartbeat(pb::HeartbeatRequest {
            node_id: id,
            ..Default::default()
        })
        .await
    }));
    assert_eq!(beat.err(), Some(Code::PermissionDenied));
}

#[test]
fn clients_accept_only_the_server_role_they_asked_for() {
    let c = cluster();
    // A node's certificate is not a meta's: connecting to a node's address
    // as if it were meta fails the handshake.
    let wrong = rt().block_on(c.grpc_channel(c.node_addr(0), Role::Meta, Some("client")));
    assert!(wrong.is_err(), "a node passed as meta");
}

#[test]
fn dfs_ca_creates_a_ca_and_issues_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let dfs = |args: &[&str]| {
        std::process::Command::new(dfs_tests::bin_dir().join("dfs"))
            .args(args)
            .output()
            .unwrap()
    };
    let p = pki.to_str().unwrap();
    assert!(dfs(&["ca", "init", p]).status.success());
    assert!(
        !dfs(&["ca", "init", p]).status.success(),
        "a CA is never overwritten"
    );
    let out = dfs(&[
        "ca", "issue", p, "--role", "node", "n1", "--host", "10.0.0.5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pki.join("n1.crt").exists() && pki.join("n1.key").exists());
    let bad = dfs(&["ca", "issue", p, "--role", "root", "x"]);
    assert!(!bad.status.success());
    assert!(!pki.join("x.crt").exists());
}

/// Reads a whole chunk from node `i` with `token`, as certificate `cert`.
async fn read_with(
    c: &Cluster,
    i: usize,
    cert: &str,
    chunk_id: u64,
    token: Option<pb::ChunkToken>,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = c
        .grpc_channel(c.node_addr(i), Role::Node, Some(cert))
        .await
        .unwrap();
    let mut stream = ChunkClient::new(channel)
        .read_chunk(pb::ReadChunkRequest {
            chunk_id,
            offset: 0,
            length: 1 << 20,
            token,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(m) = stream.message().await? {
        data.extend_from_slice(&m.data);
    }
    Ok(data)
}

/// Writes `data` as `placed`'s chunk, announced as 4 bytes with `crc32c`, to
/// the node behind `channel` (as "client"), which forwards it to `forward`.
async fn write_announced_4(
    channel: &tonic::transport::Channel,
    placed: &pb::PlaceChunkReply,
    forward: Vec<pb::NodeRef>,
    data: &[u8],
    crc32c: u32,
) -> Result<tonic::Response<pb::WriteChunkReply>, tonic::Status> {
    let header = pb::WriteChunkRequest {
        msg: Some(pb::write_chunk_request::Msg::Header(pb::WriteHeader {
            chunk_id: placed.chunk_id,
            length: 4,
            crc32c,
            durable: false,
            forward,
            token: placed.token.clone(),
        })),
    };
    let data = pb::WriteChunkRequest {
        msg: Some(pb::write_chunk_request::Msg::Data(data.to_vec().into())),
    };
    ChunkClient::new(channel.clone())
        .write_chunk(futures::stream::iter(vec![header, data]))
        .await
}

/// A new chunk id and its targets, from meta.
async fn place_new_chunk(meta: &mut MetaClient<tonic::transport::Channel>) -> pb::PlaceChunkReply {
    meta.place_chunk(pb::PlaceChunkRequest {
        chunk_id: 0,
        count: 0,
        exclude_node_ids: vec![],
        batch: 0,
    })
    .await
    .unwrap()
    .into_inner()
}

/// The key meta signs chunk tokens with, read from its SQLite store (only
/// a test can: it stands for a forger who stole it, or for meta itself).
fn token_key(c: &Cluster) -> Vec<u8> {
    let path = c.store_url.trim_start_matches("sqlite://");
    let db = rusqlite::Connection::open(path).unwrap();
    let hex: String = db
        .query_row(
            "SELECT value FROM meta_config WHERE key = 'chunk_token_key'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn nodes_serve_clients_only_with_a_valid_chunk_token() {
    let c = Cluster::start(Options {
        chunk_size: 1 << 20,
        ..Options::default()
    });
    let f = c.random_file("f", (1 << 20) + 1000);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/f"]);
    rt().block_on(async {
        let mut meta = MetaClient::new(
            c.grpc_channel(&c.meta_addr, Role::Meta, Some("client"))
                .await
                .unwrap(),
        );
        let ino = meta
            .resolve_path(pb::ResolvePathRequest {
                path: b"/f".to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .attr
            .unwrap()
            .ino;
        let map = meta
            .get_chunks(pb::GetChunksRequest { ino })
            .await
            .unwrap()
            .into_inner();
        let (a, b) = (&map.chunks[0], &map.chunks[1]);
        let holder = c.node_index(a.replicas[0].node_id);
        let token = a.read_token.clone();
        assert!(token.is_some(), "chunk maps carry read tokens");
        // The token meta gave: the chunk reads.
        let data = read_with(&c, holder, "client", a.chunk_id, token.clone())
            .await
            .unwrap();
        assert_eq!(data, std::fs::read(&f).unwrap()[..1 << 20]);
        let code = |r: Result<Vec<u8>, tonic::Status>| r.err().map(|s| s.code());
        // No token, a forged one, another chunk's, another certificate's.
        assert_eq!(
            code(read_with(&c, holder, "client", a.chunk_id, None).await),
            Some(Code::PermissionDenied)
        );
        let mut forged = token.clone().unwrap();
        forged.mac[0] ^= 1;
        assert_eq!(
            code(read_with(&c, holder, "client", a.chunk_id, Some(forged)).await),
            Some(Code::PermissionDenied)
        );
        let b_holder = c.node_index(b.replicas[0].node_id);
        assert_eq!(
            code(read_with(&c, b_holder, "client", b.chunk_id, token.clone()).await),
            Some(Code::PermissionDenied),
            "a token of chunk {} read chunk {}",
            a.chunk_id,
            b.chunk_id
        );
        assert_eq!(
            code(read_with(&c, holder, "client2", a.chunk_id, token.clone()).await),
            Some(Code::PermissionDenied),
            "a token made out to another certificate"
        );
        // An expired token (signed with the real key, so only the expiry is
        // wrong): refused, with EKEYEXPIRED (readers then fetch a new map).
        let key = token_key(&c);
        let expired_at = 1_000;
        let grant = dfs_auth::Grant {
            op: dfs_auth::ChunkOp::Read,
            chunk_id: a.chunk_id,
            expires_ms: expired_at,
            holder: "client",
            targets: vec![],
        };
        let expired = pb::ChunkToken {
            expires_ms: expired_at,
            mac: dfs_auth::token::sign(&key, &grant),
            targets: vec![],
        };
        let err = read_with(&c, holder, "client", a.chunk_id, Some(expired))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(dfs_proto::errno_of(&err), libc::EKEYEXPIRED);
        // A write token names the nodes a write may go to: a client cannot
        // make a node forward anywhere else.
        let placed = place_new_chunk(&mut meta).await;
        let head = c.node_index(placed.targets[0].node_id);
        let channel = c
            .grpc_channel(c.node_addr(head), Role::Node, Some("client"))
            .await
            .unwrap();
        let good = crc32c::crc32c(b"abcd");
        let write = |forward| write_announced_4(&channel, &placed, forward, b"abcd", good);
        let evil = vec![pb::NodeRef {
            node_id: placed.targets[1].node_id,
            addr: "127.0.0.1:9".into(),
        }];
        assert_eq!(
            write(evil).await.err().map(|s| s.code()),
            Some(Code::PermissionDenied)
        );
        // The placement's own chain is fine.
        let reply = write(placed.targets[1..].to_vec())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.stored.len(), placed.targets.len(), "{reply:?}");
        // The last node of a chain (every node of a small write's fan-out)
        // takes a small chunk whole: more bytes than announced, or a wrong
        // checksum, is refused and stores nothing.
        let small = place_new_chunk(&mut meta).await;
        let last = small.targets[0].clone();
        let channel = c
            .grpc_channel(
                c.node_addr(c.node_index(last.node_id)),
                Role::Node,
                Some("client"),
            )
            .await
            .unwrap();
        let send =
            |data: &'static [u8], crc32c| write_announced_4(&channel, &small, vec![], data, crc32c);
        let too_long = send(b"abcdef", good).await.unwrap_err();
        assert_eq!(dfs_proto::errno_of(&too_long), libc::EINVAL, "{too_long:?}");
        let wrong = send(b"abcd", good ^ 1).await.unwrap_err();
        assert_eq!(dfs_proto::errno_of(&wrong), libc::EINVAL, "{wrong:?}");
        // Nothing of either stayed: the right bytes go in under the same id.
        let reply = send(b"abcd", good).await.unwrap().into_inner();
        assert_eq!(reply.stored, vec![last.node_id]);
    });
}

#[test]
fn exports_make_clients_read_only_or_squash_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    let exports = dir.path().join("exports");
    std::fs::write(
        &exports,
        "# who        path  options\n\
         reader       /     ro\n\
         squashed     /     rw,root_squash,anonuid=4242,anongid=4343\n\
         limited      /     rw,uids=1000-1999,gids=1000-1999\n\
         client       /     rw\n",
    )
    .unwrap();
    let c = Cluster::start(Options {
        meta_args: vec!["--exports".into(), exports.display().to_string()],
        ..Options::default()
    });
    c.dfs_ok(&["mkdir", "/d"]);
    let f = c.random_file("f", 1000);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/d/f"]);
    // A read-only export: reading works, every change is EROFS.
    let ro = c.mount_as("ro", "reader").unwrap();
    assert!(std::fs::read(ro.join("d/f")).unwrap() == std::fs::read(&f).unwrap());
    for result in [
        std::fs::write(ro.join("d/new"), b"x").map(|_| ()),
        std::fs::remove_file(ro.join("d/f")),
        std::fs::create_dir(ro.join("e")),
        std::fs::rename(ro.join("d/f"), ro.join("d/g")),
    ] {
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EROFS));
    }
    // Root squash: what root (this test) creates belongs to the anonymous ids,
    // a chown to root too; device nodes are refused.
    let sq = c.mount_as("sq", "squashed").unwrap();
    std::fs::write(sq.join("d/mine"), b"x").unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(sq.join("d/mine")).unwrap();
    assert_eq!((m.uid(), m.gid()), (4242, 4343));
    let out = std::process::Command::new("chown")
        .arg("0:0")
        .arg(sq.join("d/mine"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = std::fs::metadata(sq.join("d/mine")).unwrap();
    assert_eq!((m.uid(), m.gid()), (4242, 4343));
    let mknod = std::process::Command::new("mknod")
        .arg(sq.join("d/dev"))
        .args(["c", "1", "3"])
        .output()
        .unwrap();
    assert!(
        !mknod.status.success(),
        "a squashed client made a device node"
    );
    // A certificate no rule names cannot mount at all.
    let err = c.mount_as("stranger", "stranger").err().expect("refused");
    assert!(err.contains("export"), "{err}");
    // An unsquashed, read-write client keeps root's ownership.
    let rw = c.mount("rw");
    std::fs::write(rw.join("d/root-owned"), b"x").unwrap();
    assert_eq!(std::fs::metadata(rw.join("d/root-owned")).unwrap().uid(), 0);
    // An export that allows only some owners: root may not create files,
    // nor give one away to root; uid 1500 may.
    std::fs::create_dir(rw.join("open")).unwrap();
    std::fs::set_permissions(rw.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let lim = c.mount_as("lim", "limited").unwrap();
    let denied = std::fs::write(lim.join("open/by-root"), b"x").unwrap_err();
    assert_eq!(denied.raw_os_error(), Some(libc::EPERM), "{denied}");
    let as_1500 = std::process::Command::new("setpriv")
        .args(["--reuid=1500", "--regid=1500", "--clear-groups", "touch"])
        .arg(lim.join("open/by-1500"))
        .output()
        .unwrap();
    assert!(
        as_1500.status.success(),
        "{}",
        String::from_utf8_lossy(&as_1500.stderr)
    );
    assert_eq!(
        std::fs::metadata(lim.join("open/by-1500")).unwrap().uid(),
        1500
    );
    let chown = std::process::Command::new("chown")
        .arg("0")
        .arg(lim.join("open/by-1500"))
        .output()
        .unwrap();
    assert!(!chown.status.success(), "gave a file to root");
    // Nothing the read-only client tried happened.
    let names = c.dfs_ok(&["ls", "/d"]);
    assert!(
        !names.contains("new") && names.contains('f') && !names.contains('g'),
        "{names}"
    );
}

#[test]
fn a_subtree_export_confines_its_client_to_that_directory() {
    let dir = tempfile::tempdir().unwrap();
    let exports = dir.path().join("exports");
    std::fs::write(
        &exports,
        "team    /projects/team  rw\n\
         ghost   /nowhere        rw\n\
         client  /               rw\n",
    )
    .unwrap();
    let c = Cluster::start(Options {
        meta_args: vec!["--exports".into(), exports.display().to_string()],
        ..Options::default()
    });
    c.dfs_ok(&["mkdir", "/projects"]);
    c.dfs_ok(&["mkdir", "/projects/team"]);
    let f = c.random_file("f", 100_000);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/secret"]);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/projects/team/shared"]);
    // Through a mount: the export's directory is the root, and what the
    // client makes lands in it.
    let t = c.mount_as("team", "team").unwrap();
    let names: Vec<String> = std::fs::read_dir(t.join(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["shared".to_string()]);
    assert!(std::fs::read(t.join("shared")).unwrap() == std::fs::read(&f).unwrap());
    std::fs::create_dir(t.join("sub")).unwrap();
    std::fs::write(t.join("sub/new"), b"hello").unwrap();
    std::fs::rename(t.join("sub/new"), t.join("new")).unwrap();
    let out = dir.path().join("out");
    c.dfs_ok(&["get", "/projects/team/new", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), b"hello");
    // A file open while unlinked (an orphan the client holds) stays usable.
    {
        use std::io::{Read, Seek, Write};
        let mut open = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(t.join("tmp"))
            .unwrap();
        open.write_all(b"before").unwrap();
        open.sync_all().unwrap();
        std::fs::remove_file(t.join("tmp")).unwrap();
        open.write_all(b" after").unwrap();
        open.sync_all().unwrap();
        open.rewind().unwrap();
        let mut back = String::new();
        open.read_to_string(&mut back).unwrap();
        assert_eq!(back, "before after");
    }
    // Raw calls with the subtree's certificate: inodes and chunks outside
    // it do not exist for it, whatever their numbers.
    let team = Some("team");
    rt().block_on(async {
        let c = &c;
        let whole = |path: &'static str| async move {
            meta_call(c, Some("client"), async |mut m| {
                m.resolve_path(pb::ResolvePathRequest {
                    path: path.as_bytes().to_vec(),
                })
                .await
            })
            .await
            .unwrap()
            .into_inner()
            .attr
            .unwrap()
            .ino
        };
        let (secret, projects, shared) = (
            whole("/secret").await,
            whole("/projects").await,
            whole("/projects/team/shared").await,
        );
        let secret_chunk = meta_call(c, Some("client"), async |mut m| {
            m.get_chunks(pb::GetChunksRequest { ino: secret }).await
        })
        .await
        .unwrap()
        .into_inner()
        .chunks[0]
            .chunk_id;
        let root = meta_call(c, team, async |mut m| {
            m.get_attr(pb::GetAttrRequest {
                ino: dfs_proto::ROOT_INO,
            })
            .await
        })
        .await
        .unwrap();
        assert_eq!(root.into_inner().attr.unwrap().ino, dfs_proto::ROOT_INO);
        let resolved = meta_call(c, team, async |mut m| {
            m.resolve_path(pb::ResolvePathRequest {
                path: b"/../../shared".to_vec(),
            })
            .await
        })
        .await
        .unwrap();
        assert_eq!(resolved.into_inner().attr.unwrap().ino, shared);
        assert!(not_found(
            meta_call(c, team, async |mut m| {
                m.resolve_path(pb::ResolvePathRequest {
                    path: b"/../../secret".to_vec(),
                })
                .await
            })
            .await
        ));
        assert!(not_found(
            meta_call(c, team, async |mut m| {
                m.get_attr(pb::GetAttrRequest { ino: secret }).await
            })
            .await
        ));
        assert!(not_found(
            meta_call(c, team, async |mut m| {
                m.read_dir(pb::ReadDirRequest {
                    ino: projects,
                    ..Default::default()
                })
                .await
            })
            .await
        ));
        assert!(not_found(
            meta_call(c, team, async |mut m| {
                m.get_chunks(pb::GetChunksRequest { ino: secret }).await
            })
            .await
        ));
        assert!(not_found(
            meta_call(c, team, async |mut m| {
                m.set_attr(pb::SetAttrRequest {
                    ino: secret,
                    mode: Some(0o777),
                    ..Default::default()
                })
                .await
            })
            .await
        ));
        assert!(not_found(
            meta_call(c, team, async |mut m| {
                m.link(pb::LinkRequest {
                    ino: secret,
                    new_parent: dfs_proto::ROOT_INO,
                    new_name: b"stolen".to_vec(),
                })
                .await
            })
            .await
        ));
        assert!(not_found(
            meta_call(c, team, async |mut m| {
                m.rename(pb::RenameRequest {
                    parent: dfs_proto::ROOT_INO,
                    name: b"shared".to_vec(),
                    new_parent: projects,
                    new_name: b"escaped".to_vec(),
                    ..Default::default()
                })
                .await
            })
            .await
        ));
        assert!(not_found(
            meta_call(c, team, async |mut m| {
                m.place_chunk(pb::PlaceChunkRequest {
                    chunk_id: secret_chunk,
                    count: 1,
                    ..Default::default()
                })
                .await
            })
            .await
        ));
        assert!(denied(
            meta_call(c, team, async |mut m| {
                m.fsck(pb::FsckRequest::default()).await
            })
            .await
        ));
    });
    // Nothing outside changed.
    assert_eq!(c.dfs_ok(&["ls", "/projects"]).trim(), "team");
    let root_names = c.dfs_ok(&["ls", "/"]);
    assert!(!root_names.contains("stolen"), "{root_names}");
    // The mode field itself: the rest of `dfs stat` (a checksum in hex, node
    // ports, times) may contain "777" by chance.
    let secret = c.dfs_ok(&["stat", "/secret"]);
    let mode = secret
        .lines()
        .find(|l| l.starts_with("inode:"))
        .unwrap_or_default();
    assert!(mode.contains("mode: "), "{secret}");
    assert!(!mode.contains("rwxrwxrwx"), "{secret}");
    // An export whose directory does not exist cannot be mounted.
    let err = c.mount_as("ghost", "ghost").err().expect("refused");
    assert!(err.contains("exported directory"), "{err}");
}

#[test]
fn malformed_or_oversize_requests_are_refused_and_change_nothing() {
    let c = cluster();
    rt().block_on(async {
        let create = |name: Vec<u8>, kind: pb::FileKind, target: Vec<u8>| pb::CreateRequest {
            parent: dfs_proto::ROOT_INO,
            name,
            kind: kind as i32,
            mode: 0o644,
            symlink_target: target,
            ..Default::default()
        };
        let client = Some("client");
        let code = |r: Result<tonic::Response<pb::AttrReply>, Code>| r.err();
        // Malformed: a slash or NUL in a name, NUL in a symlink target, an
        // unknown kind.
        for bad in [
            create(b"a/b".to_vec(), pb::FileKind::Regular, vec![]),
            create(b"a\0b".to_vec(), pb::FileKind::Regular, vec![]),
            create(b"l".to_vec(), pb::FileKind::Symlink, b"x\0y".to_vec()),
            pb::CreateRequest {
                kind: 99,
                ..create(b"k".to_vec(), pb::FileKind::Regular, vec![])
            },
        ] {
            let r = meta_call(&c, client, async |mut m| m.create(bad).await).await;
            assert_eq!(code(r), Some(Code::InvalidArgument));
        }
        // An xattr name with NUL.
        let f = meta_call(&c, client, async |mut m| {
            m.create(create(b"f".to_vec(), pb::FileKind::Regular, vec![]))
                .await
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
        let r = meta_call(&c, client, async |mut m| {
            m.set_xattr(pb::SetXattrRequest {
                ino: f.ino,
                name: b"user.a\0b".to_vec(),
                value: b"v".to_vec(),
                flags: 0,
            })
            .await
        })
        .await;
        assert_eq!(r.err(), Some(Code::InvalidArgument));
        // Oversize: a 20 MiB metadata request is refused before a handler.
        let huge = create(vec![b'n'; 20 << 20], pb::FileKind::Regular, vec![]);
        let r = meta_call(&c, client, async |mut m| m.create(huge).await).await;
        assert_eq!(r.err(), Some(Code::InvalidArgument), "a 20 MiB request");
    });
    // A 5 MiB message to a node (its limit is 4 MiB) is refused the same way.
    let r = rt().block_on(node_call(&c, 0, Some("client"), async |mut n| {
        n.write_chunk(tokio_stream::iter([pb::WriteChunkRequest {
            msg: Some(pb::write_chunk_request::Msg::Data(
                vec![7u8; 5 << 20].into(),
            )),
        }]))
        .await
    }));
    assert_eq!(r.err(), Some(Code::InvalidArgument));
    // Only the one good file exists, without xattrs.
    assert_eq!(c.dfs_ok(&["ls", "/"]).trim(), "f");
}

#[test]
fn a_clients_bad_replica_report_counts_only_when_the_node_confirms_it() {
    let c = Cluster::start(Options::default());
    let f = c.random_file("f", 100_000);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/f"]);
    let chunks = dfs_tests::stat_chunks(&c.dfs_ok(&["stat", "/f"]));
    let (_, replicas) = &chunks[0];
    let chunk_id: u64 = {
        let stat: serde_json::Value =
            serde_json::from_str(&c.dfs_ok(&["stat", "/f", "--json"])).unwrap();
        stat["chunks"][0]["id"].as_u64().unwrap()
    };
    let report = |node_id: u64| {
        rt().block_on(meta_call(&c, Some("client"), async |mut m| {
            m.report_bad_replica(pb::BadReplicaRequest { chunk_id, node_id })
                .await
        }))
    };
    // A lie about a healthy replica: accepted quietly, and nothing changes.
    let healthy = replicas[0].0;
    assert!(report(healthy).is_ok());
    let after = dfs_tests::stat_chunks(&c.dfs_ok(&["stat", "/f"]));
    assert_eq!(
        after, chunks,
        "a healthy replica was quarantined on a client's word"
    );
    assert!(c.dfs_ok(&["fsck"]).contains("status: HEALTHY"));
    // A replica that really is corrupt: its node confirms, meta quarantines it.
    let bad = replicas[1].0;
    let i = c.node_index(bad);
    let path = c
        .node_data(i)
        .join("chunks")
        .join(format!("{:02x}", chunk_id % 256))
        .join(format!("{chunk_id:016x}"));
    let mut raw = std::fs::read(&path).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x5a;
    std::fs::write(&path, raw).unwrap();
    assert!(report(bad).is_ok());
    let stat = c.dfs_ok(&["stat", "/f"]);
    let now = dfs_tests::stat_chunks(&stat);
    assert!(
        !now[0].1.iter().any(|(id, good)| *id == bad && *good),
        "the corrupt replica still counts: {stat}"
    );
}

#[test]
fn a_clients_replica_claims_count_only_when_the_nodes_confirm_them() {
    let c = Cluster::start(Options {
        nodes: 4,
        ..Options::default()
    });
    c.wait_nodes_up(4);
    let f = c.random_file("f", 100_000);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/f"]);
    let chunks = dfs_tests::stat_chunks(&c.dfs_ok(&["stat", "/f"]));
    let holders: Vec<u64> = chunks[0].1.iter().map(|(id, _)| *id).collect();
    let stat: serde_json::Value =
        serde_json::from_str(&c.dfs_ok(&["stat", "/f", "--json"])).unwrap();
    let chunk_id = stat["chunks"][0]["id"].as_u64().unwrap();
    let outsider: u64 = c
        .dfs_ok(&["nodes"])
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .find(|id| !holders.contains(id))
        .expect("a fourth node");
    rt().block_on(async {
        // A phantom copy on a node that has none: accepted quietly, not recorded.
        meta_call(&c, Some("client"), async |mut m| {
            m.replica_added(pb::ReplicaAddedRequest {
                chunk_id,
                node_ids: vec![outsider],
            })
            .await
        })
        .await
        .unwrap();
        // "Could not sync" about a healthy copy: its node syncs it for meta,
        // so it stays.
        meta_call(&c, Some("client"), async |mut m| {
            m.forget_replica(pb::ForgetReplicaRequest {
                chunk_id,
                node_id: holders[0],
            })
            .await
        })
        .await
        .unwrap();
    });
    assert_eq!(
        dfs_tests::stat_chunks(&c.dfs_ok(&["stat", "/f"])),
        chunks,
        "a client's unconfirmed claim changed the replicas"
    );
    // The same claims from an admin (who is trusted) take effect: the test
    // can tell.
    rt().block_on(async {
        meta_call(&c, Some("admin"), async |mut m| {
            m.forget_replica(pb::ForgetReplicaRequest {
                chunk_id,
                node_id: holders[0],
            })
            .await
        })
        .await
        .unwrap();
    });
    let after = dfs_tests::stat_chunks(&c.dfs_ok(&["stat", "/f"]));
    assert!(
        !after[0].1.iter().any(|(id, _)| *id == holders[0]),
        "{after:?}"
    );
}

#[test]
fn a_session_serves_only_the_certificate_that_opened_it() {
    let c = cluster();
    let m = c.mount("m");
    std::fs::write(m.join("f"), b"x").unwrap();
    let list: serde_json::Value = serde_json::from_str(&c.dfs_ok(&["--json", "sessions"])).unwrap();
    let session = list[0]["id"].as_u64().unwrap();
    assert_eq!(list[0]["owner"], "client");
    rt().block_on(async {
        // Another client certificate naming that session in a request, or
        // closing it, is refused.
        let in_session = meta_call(&c, Some("intruder"), async |mut m| {
            let mut req = tonic::Request::new(pb::GetAttrRequest {
                ino: dfs_proto::ROOT_INO,
            });
            req.metadata_mut().insert(
                dfs_proto::session::SESSION_HEADER,
                session.to_string().parse().unwrap(),
            );
            m.get_attr(req).await
        })
        .await;
        assert!(denied(in_session));
        let close = meta_call(&c, Some("intruder"), async |mut m| {
            m.close_session(pb::CloseSessionRequest {
                session_id: session,
            })
            .await
        })
        .await;
        assert!(denied(close));
        // Without a session the intruder is an ordinary client.
        assert!(meta_call(&c, Some("intruder"), async |mut m| {
            m.get_attr(pb::GetAttrRequest {
                ino: dfs_proto::ROOT_INO,
            })
            .await
        })
        .await
        .is_ok());
    });
    let list: serde_json::Value = serde_json::from_str(&c.dfs_ok(&["--json", "sessions"])).unwrap();
    assert_eq!(list[0]["id"].as_u64(), Some(session), "{list}");
    assert_eq!(std::fs::read(m.join("f")).unwrap(), b"x");
}

#[test]
fn a_registration_comes_in_pages_and_meta_reads_them_all() {
    let c = cluster();
    // A new node whose chunks meta does not know, reported in three pages:
    // every one of them comes back as garbage to delete.
    let ids: Vec<u64> = (1_000_000..1_000_030).collect();
    let pages: Vec<pb::RegisterNodeRequest> = ids
        .chunks(10)
        .enumerate()
        .map(|(i, page)| pb::RegisterNodeRequest {
            uuid: if i == 0 {
                "paged".into()
            } else {
                String::new()
            },
            addr: if i == 0 {
                "127.0.0.1:9".into()
            } else {
                String::new()
            },
            chunk_ids: page.to_vec(),
            ..Default::default()
        })
        .collect();
    let reply = rt()
        .block_on(meta_call(&c, Some("node-paged"), async |mut m| {
            m.register_node(tokio_stream::iter(pages)).await
        }))
        .unwrap()
        .into_inner();
    let mut deletes = reply.delete_chunk_ids;
    deletes.sort_unstable();
    assert_eq!(deletes, ids);
    // No message at all is not a registration.
    let empty = rt().block_on(meta_call(&c, Some("node-paged"), async |mut m| {
        m.register_node(tokio_stream::iter(Vec::<pb::RegisterNodeRequest>::new()))
            .await
    }));
    assert_eq!(empty.err(), Some(Code::InvalidArgument));
}

#[test]
fn a_server_serves_at_most_its_connection_limit_and_the_rest_wait() {
    let mut c = cluster();
    assert!(c.stop_node(0));
    c.set_node_args(0, &["--max-connections", "2"]);
    c.restart_node(0);
    c.wait_nodes_up(3);
    let addr = c.node_addr(0).to_string();
    rt().block_on(async {
        let wait = std::time::Duration::from_secs(2);
        let connect = || async {
            tokio::time::timeout(wait, c.grpc_channel(&addr, Role::Node, Some("client"))).await
        };
        let info = |ch: tonic::transport::Channel| async move {
            ChunkClient::new(ch).node_info(pb::Empty {}).await.is_ok()
        };
        // Meta may still count the node up from its heartbeats before the
        // stop: the restarted one listens a moment later. A refused attempt
        // was never accepted, so it takes none of the two places.
        let mut first = None;
        for _ in 0..100 {
            if let Ok(Ok(ch)) = connect().await {
                first = Some(ch);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let a = first.expect("the restarted node accepts a connection");
        let b = connect().await.unwrap().unwrap();
        assert!(info(a.clone()).await && info(b.clone()).await);
        // A third connection is not accepted (its TLS handshake waits)...
        assert!(connect().await.is_err(), "a third connection was served");
        // ...until one of the two closes.
        drop(a);
        let mut served = false;
        for _ in 0..20 {
            if let Ok(Ok(ch)) = connect().await {
                served = info(ch).await;
                break;
            }
        }
        assert!(served, "no connection served after one closed");
        assert!(info(b).await);
    });
}

#[test]
fn a_peer_that_never_finishes_its_handshake_loses_its_slot() {
    let mut c = cluster();
    assert!(c.stop_node(0));
    c.set_node_args(0, &["--max-connections", "1"]);
    c.restart_node(0);
    c.wait_nodes_up(3);
    let addr = c.node_addr(0).to_string();
    // A bare TCP connection that never starts TLS takes the only slot...
    let idle = std::net::TcpStream::connect(&addr).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    rt().block_on(async {
        let connect = |secs| {
            tokio::time::timeout(
                std::time::Duration::from_secs(secs),
                c.grpc_channel(&addr, Role::Node, Some("client")),
            )
        };
        assert!(connect(2).await.is_err(), "served past the limit");
        // ...until the handshake deadline (10 s) frees it, idle peer and all.
        let ch = connect(20).await.expect("slot never freed").unwrap();
        assert!(ChunkClient::new(ch).node_info(pb::Empty {}).await.is_ok());
    });
    drop(idle);
}

#[test]
fn an_early_create_needs_a_number_granted_to_its_own_certificate() {
    let c = cluster();
    let create = |name: &str| pb::CreateRequest {
        parent: dfs_proto::ROOT_INO,
        name: name.as_bytes().to_vec(),
        kind: pb::FileKind::Regular as i32,
        mode: 0o640,
        uid: 1000,
        gid: 1000,
        ..Default::default()
    };
    let time = pb::Timespec {
        sec: 1_700_000_000,
        nsec: 5,
    };
    let early = |name: &str, ino: u64, grant: &pb::InoGrant| pb::CreateRequest {
        ino,
        grant: Some(grant.clone()),
        time: Some(time),
        ..create(name)
    };
    rt().block_on(async {
        let call = async |cert: &str, req: pb::CreateRequest| {
            meta_call(&c, Some(cert), async |mut m| m.create(req).await)
                .await
                .map(|r| r.into_inner())
        };
        let asked = call(
            "client",
            pb::CreateRequest {
                want_inos: 16,
                ..create("a")
            },
        )
        .await
        .unwrap();
        let grant = asked.inos.expect("the numbers asked for");
        assert_eq!(grant.count, 16);
        // Another certificate cannot use them; a changed token or a widened
        // grant is no grant; a number outside it is refused.
        assert!(denied(
            call("intruder", early("b", grant.first, &grant)).await
        ));
        let mut forged = grant.clone();
        forged.token[0] ^= 1;
        assert!(denied(
            call("client", early("b", grant.first, &forged)).await
        ));
        let wider = pb::InoGrant {
            count: grant.count + 1,
            ..grant.clone()
        };
        assert!(denied(
            call("client", early("b", grant.first + 16, &wider)).await
        ));
        assert_eq!(
            call("client", early("b", grant.first + 16, &grant))
                .await
                .err(),
            Some(Code::InvalidArgument)
        );
        // Only a regular file is numbered by the client.
        let dir = pb::CreateRequest {
            kind: pb::FileKind::Directory as i32,
            ..early("b", grant.first, &grant)
        };
        assert_eq!(call("client", dir).await.err(), Some(Code::InvalidArgument));
        // The holder can: the file has the number and the time it chose.
        let made = call("client", early("b", grant.first + 3, &grant))
            .await
            .unwrap();
        let attr = made.attr.unwrap();
        assert_eq!(attr.ino, grant.first + 3);
        assert_eq!((attr.mtime, attr.ctime), (Some(time), Some(time)));
        assert_eq!((attr.mode, attr.uid, attr.gid), (0o640, 1000, 1000));
        assert_eq!(made.parent.unwrap().mtime, Some(time));
        // The same create sent again is the same file; a number in use
        // under another name is refused, not reused.
        let again = call("client", early("b", grant.first + 3, &grant))
            .await
            .unwrap();
        assert_eq!(again.attr.unwrap().ino, grant.first + 3);
        assert_eq!(
            call("client", early("c", grant.first + 3, &grant))
                .await
                .err(),
            Some(Code::AlreadyExists)
        );
    });
    assert_eq!(c.dfs_ok(&["ls", "/"]).split_whitespace().count(), 2);
}
