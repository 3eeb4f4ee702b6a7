//! The offline bundle without Docker: pack → verify → load round trips on generated files
//! (whole and in parts, signed, delta), and every hostile or broken archive the bundle must
//! refuse, each with a clear error and nothing written outside the target. The real-image
//! path (pack on the engine, `docker rmi`, load, `deploy.sh start` with no network) is
//! `scripts/e2e-offline.sh`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use trident::bundle::load::{self, LoadArgs};
use trident::bundle::manifest::{self, FileEntry, Manifest};
use trident::bundle::pack::{self, PackArgs};
use trident::bundle::parts::PartList;
use trident::bundle::progress::Mode;
use trident::bundle::{install, reader, sign, BundleError};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    out: PathBuf,
    tmp: PathBuf,
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Pseudo-random bytes (weights do not compress).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A repository-shaped directory: config, two models (a directory and a GGUF file with a
/// side tokenizer), and every appliance file `pack` carries.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    write(
        &root.join("config/models.json"),
        br#"{"models": {
          "chat": {"path": "models/chat/m.gguf", "type": "chat", "port": 8001},
          "embedding": {"path": "models/embedding", "type": "embedding", "port": 8002},
          "rerank": {"path": "models/embedding", "type": "rerank", "port": 8003},
          "remote": {"upstream": "http://127.0.0.1:9/v1", "type": "chat"}}}"#,
    );
    write(&root.join("models/chat/m.gguf"), &noise(1_500_000, 1));
    write(&root.join("models/chat/tokenizer.json"), b"{}");
    write(&root.join("models/chat/unrelated.txt"), b"not carried");
    write(
        &root.join("models/embedding/model.safetensors"),
        &noise(2_300_000, 2),
    );
    write(
        &root.join("models/embedding/1_Pooling/config.json"),
        b"{\"pooling\":1}",
    );
    for f in [
        "compose.yaml",
        ".env.example",
        "scripts/lib/docker.sh",
        "docker/nginx/trident.conf",
        "compose/gpu.yaml",
        "monitoring/prometheus/prometheus.yml",
        "offline/README.md",
        "offline/README.zh-CN.md",
    ] {
        write(&root.join(f), format!("# {f}\n").as_bytes());
    }
    for f in [
        "deploy.sh",
        "offline/load_images.sh",
        "offline/deploy.sh",
        "bin-trident",
    ] {
        write(&root.join(f), b"#!/bin/sh\necho hi\n");
    }
    let out = dir.path().join("dist");
    let tmp = dir.path().join("site");
    std::fs::create_dir_all(&tmp).unwrap();
    Fixture {
        root,
        out,
        tmp,
        _dir: dir,
    }
}

fn pack_args(f: &Fixture) -> PackArgs {
    PackArgs {
        tag: Some("t1".into()),
        output: f.out.clone(),
        skip_models: false,
        models_only: false,
        part_size: None,
        sign: None,
        base: None,
        image: "trident:slim".into(),
        extra_images: Vec::new(),
        no_extra_images: true,
        no_images: true,
        root: f.root.clone(),
        config: "config/models.json".into(),
        binary: Some(f.root.join("bin-trident")),
        gzip_level: 0,
        image_gzip_level: 6,
        json: false,
    }
}

fn bundle_path(f: &Fixture) -> PathBuf {
    f.out
        .join(manifest::archive_name("t1", manifest::docker_arch()))
}

fn load_args(bundle: &Path, target: &Path) -> LoadArgs {
    LoadArgs {
        bundle: bundle.to_path_buf(),
        target: target.to_path_buf(),
        key: None,
        no_docker: true,
        json: false,
    }
}

fn verify(
    bundle: &Path,
    key: Option<&ed25519_dalek::VerifyingKey>,
) -> Result<reader::Receipt, BundleError> {
    let list = PartList::find(bundle)?;
    reader::read(&list, key, None, &mut reader::NullSink, false).map(|(_, r)| r)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn pack_verify_load_round_trip_and_rerun() {
    let f = fixture();
    assert_eq!(pack::run(&pack_args(&f)).unwrap(), 0);
    let bundle = bundle_path(&f);
    let receipt = verify(&bundle, None).unwrap();
    // 2 chat files (model + side tokenizer), 2 embedding files, config, 12 appliance files.
    assert_eq!(receipt.files_checked, 17, "{receipt:?}");
    assert_eq!(receipt.parts_checked, 1);
    assert!(matches!(receipt.signature, sign::SignatureState::Unsigned));

    let list = PartList::find(&bundle).unwrap();
    let (m, _) = reader::read(&list, None, None, &mut reader::NullSink, true).unwrap();
    assert_eq!(m.models.len(), 2);
    let emb = m
        .models
        .iter()
        .find(|g| g.path == "models/embedding")
        .unwrap();
    assert_eq!(emb.ids, ["embedding", "rerank"]);
    assert!(m.all_files().all(|f| !f.path.contains("unrelated")));

    let target = f.tmp.join("trident-offline");
    let out = load::load(&load_args(&bundle, &target), Mode::Quiet).unwrap();
    assert_eq!((out.files_written, out.files_already_present), (17, 0));
    assert_eq!(
        std::fs::read(target.join("models/embedding/model.safetensors")).unwrap(),
        noise(2_300_000, 2)
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &str| {
        std::fs::metadata(target.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("scripts/deploy.sh"), 0o755);
    assert_eq!(mode("bin/trident"), 0o755);
    assert_eq!(mode("config/models.json"), 0o644);
    // SHA256SUMS in the target is sha256sum -c compatible and true.
    for line in std::fs::read_to_string(target.join("SHA256SUMS"))
        .unwrap()
        .lines()
    {
        let (sha, path) = line.split_once("  ").unwrap();
        assert_eq!(
            install::sha256_file(&target.join(path)).unwrap(),
            sha,
            "{path}"
        );
    }
    // Nothing but the target in its parent: the staging directory is gone.
    assert_eq!(names(&f.tmp), ["trident-offline"]);

    // A rerun writes nothing, and an install with one damaged file repairs just that file.
    let again = load::load(&load_args(&bundle, &target), Mode::Quiet).unwrap();
    assert_eq!((again.files_written, again.files_already_present), (0, 17));
    std::fs::write(target.join("models/chat/m.gguf"), b"damaged").unwrap();
    let repair = load::load(&load_args(&bundle, &target), Mode::Quiet).unwrap();
    assert_eq!(
        (repair.files_written, repair.files_already_present),
        (1, 16)
    );
    assert_eq!(
        std::fs::read(target.join("models/chat/m.gguf")).unwrap(),
        noise(1_500_000, 1)
    );
}

#[test]
fn parts_are_checked_one_by_one() {
    let f = fixture();
    let mut a = pack_args(&f);
    a.part_size = Some(1 << 20);
    pack::run(&a).unwrap();
    let bundle = bundle_path(&f);
    let sidecar = PathBuf::from(format!("{}.sha256", bundle.display()));
    let parts: Vec<_> = names(&f.out)
        .into_iter()
        .filter(|n| n.contains(".tar.gz.0"))
        .collect();
    assert!(parts.len() >= 4, "{parts:?}");
    assert!(parts.iter().all(|p| !p.contains(':')));
    // Every part but the last is exactly the part size.
    for p in &parts[..parts.len() - 1] {
        assert_eq!(std::fs::metadata(f.out.join(p)).unwrap().len(), 1 << 20);
    }
    // sha256sum -c understands the sidecar, where the tool exists.
    if let Ok(st) = std::process::Command::new("sha256sum")
        .arg("--quiet")
        .arg("-c")
        .arg(&sidecar)
        .current_dir(&f.out)
        .status()
    {
        assert!(st.success());
    }
    for start in [&sidecar, &f.out.join(&parts[1])] {
        assert_eq!(verify(start, None).unwrap().parts_checked, parts.len());
    }
    let target = f.tmp.join("t");
    load::load(&load_args(&sidecar, &target), Mode::Quiet).unwrap();

    // One flipped byte in part 002: verify names the part and the file it falls in.
    let p2 = f.out.join(&parts[2]);
    let mut bytes = std::fs::read(&p2).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&p2, &bytes).unwrap();
    let err = verify(&sidecar, None).unwrap_err().to_string();
    assert!(err.contains(&format!("part {}", parts[2])), "{err}");
    assert!(err.contains("does not match the manifest"), "{err}");
    bytes[1000] ^= 0x40;
    std::fs::write(&p2, &bytes).unwrap();
    verify(&sidecar, None).unwrap();

    // A missing part is named before anything is read.
    std::fs::remove_file(f.out.join(&parts[3])).unwrap();
    let err = load::load(&load_args(&sidecar, &f.tmp.join("u")), Mode::Quiet).unwrap_err();
    assert!(err.to_string().contains(&parts[3]), "{err}");
    assert!(!f.tmp.join("u").exists());
}

#[test]
fn signatures_fail_closed() {
    let f = fixture();
    let keys = f.tmp.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (priv_a, pub_a, id_a) = sign::keygen(&keys.join("a")).unwrap();
    let (_, pub_b, _) = sign::keygen(&keys.join("b")).unwrap();
    let (ka, kb) = (
        sign::read_verifying_key(&pub_a).unwrap(),
        sign::read_verifying_key(&pub_b).unwrap(),
    );
    let mut a = pack_args(&f);
    a.sign = Some(priv_a);
    pack::run(&a).unwrap();
    let bundle = bundle_path(&f);
    match verify(&bundle, Some(&ka)).unwrap().signature {
        sign::SignatureState::Pinned { key_id } => assert_eq!(key_id, id_a),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        verify(&bundle, None).unwrap().signature,
        sign::SignatureState::NotPinned { .. }
    ));
    let err = verify(&bundle, Some(&kb)).unwrap_err().to_string();
    assert!(err.contains("but the key given is"), "{err}");
    let mut la = load_args(&bundle, &f.tmp.join("x"));
    la.key = Some(pub_b.clone());
    assert!(load::load(&la, Mode::Quiet).is_err());
    assert!(!f.tmp.join("x").exists());

    // An unsigned bundle where a key is required.
    let f2 = fixture();
    pack::run(&pack_args(&f2)).unwrap();
    let err = verify(&bundle_path(&f2), Some(&ka))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not signed"), "{err}");

    // The signed manifest altered (a file's digest swapped for the attacker's): refused.
    let list = PartList::find(&bundle).unwrap();
    let (mut m, _) = reader::read(&list, None, None, &mut reader::NullSink, true).unwrap();
    let sig = signature_entry(&bundle);
    m.files[0].sha256 = "0".repeat(64);
    let forged = build(&m, Some(&sig), &[], |_| {});
    let err = verify(&forged.path, None).unwrap_err().to_string();
    assert!(err.contains("does not match manifest.json"), "{err}");
}

/// The raw `manifest.sig` entry of a bundle.
fn signature_entry(bundle: &Path) -> Vec<u8> {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(bundle).unwrap());
    let mut ar = tar::Archive::new(gz);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().ends_with(manifest::SIGNATURE) {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            return v;
        }
    }
    panic!("no signature entry");
}

#[test]
fn delta_bundles_carry_only_what_changed() {
    let f = fixture();
    pack::run(&pack_args(&f)).unwrap();
    let target = f.tmp.join("trident-offline");
    load::load(&load_args(&bundle_path(&f), &target), Mode::Quiet).unwrap();
    let inv = install::inventory(&target, false).unwrap();
    assert_eq!(inv.files.len(), 17);
    let inv_path = f.tmp.join("inv.json");
    std::fs::write(&inv_path, serde_json::to_vec(&inv).unwrap()).unwrap();

    // The operator edits config on the target; the vendor ships a new model file and config.
    std::fs::write(target.join("config/models.json"), b"{\"models\":{}} ").unwrap();
    let new_weights = noise(2_300_000, 3);
    write(
        &f.root.join("models/embedding/model.safetensors"),
        &new_weights,
    );
    let cfg = std::fs::read_to_string(f.root.join("config/models.json")).unwrap();
    write(
        &f.root.join("config/models.json"),
        cfg.replace("8001", "8011").as_bytes(),
    );
    std::fs::remove_dir_all(&f.out).unwrap();
    let mut a = pack_args(&f);
    a.base = Some(inv_path);
    pack::run(&a).unwrap();
    let delta = bundle_path(&f);
    let r = verify(&delta, None).unwrap();
    assert!(r.delta);
    assert_eq!((r.files_checked, r.files_in_base), (2, 15), "{r:?}");
    assert!(std::fs::metadata(&delta).unwrap().len() < 2_600_000 + 64 * 1024);

    let out = load::load(&load_args(&delta, &target), Mode::Quiet).unwrap();
    assert_eq!(out.files_written, 2);
    assert_eq!(
        std::fs::read(target.join("models/embedding/model.safetensors")).unwrap(),
        new_weights
    );
    // The edited config is kept; the new one waits beside it.
    assert_eq!(out.config_kept, ["config/models.json"]);
    assert_eq!(
        std::fs::read(target.join("config/models.json")).unwrap(),
        b"{\"models\":{}} "
    );
    assert!(
        std::fs::read_to_string(target.join("config/models.json.bundle-new"))
            .unwrap()
            .contains("8011")
    );

    // A delta on a machine without its base is refused, naming what is missing.
    let err = load::load(&load_args(&delta, &f.tmp.join("empty")), Mode::Quiet).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BundleError::Base(_)), "{text}");
    assert!(text.contains("models/chat/m.gguf"), "{text}");
    assert!(!f.tmp.join("empty").exists());
}

// --- hostile and broken archives -------------------------------------------------------------

/// A hand-made archive: real tar headers written byte by byte, so entries the `tar` crate's
/// builder refuses to make (`..`, absolute names, links, devices) can be made.
struct RawTar(Vec<u8>);

impl RawTar {
    fn header(name: &[u8], kind: u8, size: u64, link: &[u8]) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }
    fn entry(&mut self, name: &str, kind: u8, data: &[u8], link: &str) {
        self.0.extend_from_slice(&Self::header(
            name.as_bytes(),
            kind,
            data.len() as u64,
            link.as_bytes(),
        ));
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
    }
    fn file(&mut self, rel: &str, data: &[u8]) {
        self.entry(&format!("trident-offline/{rel}"), b'0', data, "");
    }
}

struct Built {
    _dir: tempfile::TempDir,
    path: PathBuf,
    site: PathBuf,
}

fn entry(path: &str, data: &[u8]) -> FileEntry {
    FileEntry {
        path: path.into(),
        size: data.len() as u64,
        sha256: Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        mode: 0o644,
        in_base: false,
    }
}

fn manifest_of(files: &[(&str, &[u8])]) -> Manifest {
    Manifest {
        schema: manifest::SCHEMA,
        kind: manifest::KIND.into(),
        appliance: manifest::Appliance {
            version: "0.1.0".into(),
            tag: "t".into(),
            git_sha: "x".into(),
            arch: manifest::docker_arch().into(),
        },
        created: "2026-12-01T00:00:00Z".into(),
        images: Vec::new(),
        models: Vec::new(),
        files: files.iter().map(|(p, d)| entry(p, d)).collect(),
        base: None,
    }
}

/// manifest.json (+ sig), SHA256SUMS, images/IMAGES, the payload `files`, then `extra` to
/// add the hostile part; gzip'd into a fresh directory beside an empty install site.
fn build(
    m: &Manifest,
    sig: Option<&[u8]>,
    files: &[(&str, &[u8])],
    extra: impl FnOnce(&mut RawTar),
) -> Built {
    let mut t = RawTar(Vec::new());
    t.file(manifest::MANIFEST, &m.to_bytes());
    if let Some(s) = sig {
        t.file(manifest::SIGNATURE, s);
    }
    t.file(manifest::SUMS, m.sha256sums().as_bytes());
    t.file("images/IMAGES", m.images_list().as_bytes());
    for (p, d) in files {
        t.file(p, d);
    }
    extra(&mut t);
    t.0.extend_from_slice(&[0u8; 1024]);
    gz_to_dir(&t.0)
}

fn gz_to_dir(tar: &[u8]) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(tar).unwrap();
    gz.finish().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    Built {
        path,
        site,
        _dir: dir,
    }
}

/// Both verify and load refuse it with `want` in the message, and the install site stays
/// empty (no target, no staging directory, nothing escaped next to it).
fn refused(b: &Built, want: &str) {
    let err = verify(&b.path, None).unwrap_err().to_string();
    assert!(err.contains(want), "verify: expected '{want}' in: {err}");
    let err = load::load(
        &load_args(&b.path, &b.site.join("trident-offline")),
        Mode::Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(want), "load: expected '{want}' in: {err}");
    assert!(
        names(&b.site).is_empty(),
        "left behind: {:?}",
        names(&b.site)
    );
    let parent = b.path.parent().unwrap();
    assert_eq!(names(parent), ["b.tar.gz", "site"], "something escaped");
}

const OK: (&str, &[u8]) = ("config/models.json", b"{\"models\":{}}");

#[test]
fn a_good_hand_made_archive_loads() {
    // The builder below makes archives the reader accepts, so each refusal is for its one flaw.
    let m = manifest_of(&[OK]);
    let b = build(&m, None, &[OK], |_| {});
    verify(&b.path, None).unwrap();
    load::load(
        &load_args(&b.path, &b.site.join("trident-offline")),
        Mode::Quiet,
    )
    .unwrap();
}

#[test]
fn path_escapes_are_refused() {
    let m = manifest_of(&[OK]);
    refused(
        &build(&m, None, &[OK], |t| {
            t.entry("trident-offline/../evil", b'0', b"x", "")
        }),
        "'..' component",
    );
    refused(
        &build(&m, None, &[OK], |t| {
            t.entry("/tmp/trident-evil", b'0', b"x", "")
        }),
        "outside",
    );
    refused(
        &build(&m, None, &[OK], |t| {
            t.entry("trident-offline/a//b", b'0', b"x", "")
        }),
        "empty path component",
    );
}

#[test]
fn links_devices_and_fifos_are_refused() {
    let m = manifest_of(&[OK]);
    for (kind, link, what) in [
        (b'2', "/etc/passwd", "symbolic link"),
        (b'2', "config/models.json", "symbolic link"),
        (b'1', "trident-offline/config/models.json", "hard link"),
        (b'3', "", "character device"),
        (b'4', "", "block device"),
        (b'6', "", "FIFO"),
    ] {
        refused(
            &build(&m, None, &[OK], |t| {
                t.entry("trident-offline/x", kind, b"", link)
            }),
            what,
        );
    }
}

#[test]
fn long_name_and_pax_tricks_are_refused() {
    // A GNU long-name record that renames the next (listed, innocent-looking) entry.
    let m = manifest_of(&[OK]);
    refused(
        &build(&m, None, &[], |t| {
            t.entry("././@LongLink", b'L', b"trident-offline/../../evil\0", "");
            t.file(OK.0, OK.1);
        }),
        "'..' component",
    );
    refused(
        &build(&m, None, &[OK], |t| {
            t.entry("././@LongLink", b'L', &vec![b'a'; 5000], "")
        }),
        "more than the 4096 allowed",
    );
    // PAX records (path overrides) are not used by trident bundles at all.
    refused(
        &build(&m, None, &[], |t| {
            t.entry(
                "trident-offline/PaxHeader",
                b'x',
                b"34 path=trident-offline/../../evil\n",
                "",
            );
            t.file(OK.0, OK.1);
        }),
        "PAX records are not allowed",
    );
    // A long, legitimate name works.
    let long = format!("models/{}/w.bin", "d".repeat(150));
    let data: &[u8] = b"weights";
    let m = manifest_of(&[(&long, data)]);
    let b = build(&m, None, &[], |t| {
        let name = format!("trident-offline/{long}\0");
        t.entry("././@LongLink", b'L', name.as_bytes(), "");
        t.entry(
            "trident-offline/short-name-that-is-replaced",
            b'0',
            data,
            "",
        );
    });
    verify(&b.path, None).unwrap();
}

#[test]
fn manifest_rules_are_enforced() {
    let two: (&str, &[u8]) = ("a.txt", b"12345");
    let m = manifest_of(&[OK, two]);
    refused(&build(&m, None, &[OK, two, two], |_| {}), "appears twice");
    refused(
        &build(&m, None, &[OK, ("a.txt", b"1234567890")], |_| {}),
        "is 10 bytes in the archive, the manifest says 5",
    );
    refused(
        &build(&m, None, &[OK], |_| {}),
        "'a.txt' is listed in the manifest but missing from the archive",
    );
    refused(
        &build(&m, None, &[OK, two, ("b.txt", b"x")], |_| {}),
        "'b.txt' is not in the manifest",
    );
    refused(
        &build(&m, None, &[OK, ("a.txt", b"12346")], |_| {}),
        "'a.txt': sha256",
    );
    // The manifest must come first.
    let mut t = RawTar(Vec::new());
    t.file(OK.0, OK.1);
    t.file(manifest::MANIFEST, &m.to_bytes());
    t.0.extend_from_slice(&[0u8; 1024]);
    refused(&gz_to_dir(&t.0), "the first file must be manifest.json");
    // A derived listing that disagrees with the manifest.
    let mut t = RawTar(Vec::new());
    t.file(manifest::MANIFEST, &m.to_bytes());
    t.file(manifest::SUMS, b"0000  a.txt\n");
    refused(&gz_to_dir(&t.0), "'SHA256SUMS'");
}

#[test]
fn gzip_bombs_stop_at_the_manifests_total() {
    // A directory entry claiming 300 MB of data: it compresses to almost nothing, and the
    // reader must stop once the decompressed bytes pass what the manifest accounts for.
    let m = manifest_of(&[OK]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::best(),
    );
    let mut head = RawTar(Vec::new());
    head.file(manifest::MANIFEST, &m.to_bytes());
    head.file(manifest::SUMS, m.sha256sums().as_bytes());
    head.file("images/IMAGES", b"");
    head.file(OK.0, OK.1);
    gz.write_all(&head.0).unwrap();
    let size = 300u64 << 20;
    gz.write_all(&RawTar::header(b"trident-offline/d/", b'5', size, b""))
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..300 {
        gz.write_all(&zeros).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < size / 50);
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    refused(
        &Built {
            path,
            site,
            _dir: dir,
        },
        "exceeds what the manifest accounts for",
    );
}

#[test]
fn truncated_and_garbage_archives_are_refused() {
    let f = fixture();
    pack::run(&pack_args(&f)).unwrap();
    let bytes = std::fs::read(bundle_path(&f)).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 100, 300] {
        let b = gz_to_dir(b"");
        std::fs::write(&b.path, &bytes[..cut]).unwrap();
        let err = verify(&b.path, None).unwrap_err().to_string();
        assert!(
            err.contains("unreadable") || err.contains("missing"),
            "cut {cut}: {err}"
        );
        let target = b.site.join("trident-offline");
        assert!(load::load(&load_args(&b.path, &target), Mode::Quiet).is_err());
        assert!(names(&b.site).is_empty());
    }
    let b = gz_to_dir(b"");
    std::fs::write(&b.path, b"this is not gzip at all").unwrap();
    assert!(verify(&b.path, None).is_err());
}

#[test]
fn a_full_disk_midway_installs_nothing() {
    // The file-size limit makes the write of the second model fail with EFBIG, as a full disk
    // fails with ENOSPC: the load must fail naming the file, and leave nothing behind.
    let f = fixture();
    pack::run(&pack_args(&f)).unwrap();
    let target = f.tmp.join("trident-offline");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_trident"));
    cmd.args(["bundle", "load", "--no-docker", "--target"])
        .arg(&target)
        .arg(bundle_path(&f));
    // SAFETY: only async-signal-safe calls (signal disposition, setrlimit) run in the child.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(|| {
            use nix::sys::resource::{setrlimit, Resource};
            use nix::sys::signal::{signal, SigHandler, Signal};
            signal(Signal::SIGXFSZ, SigHandler::SigIgn).map_err(std::io::Error::from)?;
            setrlimit(Resource::RLIMIT_FSIZE, 2_000_000, 2_000_000)
                .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("model.safetensors"), "{stderr}");
    assert!(stderr.contains("nothing was installed"), "{stderr}");
    assert!(names(&f.tmp).is_empty(), "left behind: {:?}", names(&f.tmp));
}
