//! `image export` / `image push` / `image index`: the module's OCI image, built by this binary
//! from a static build of itself (see `module-image`), with no base image and no Docker daemon.
//! `export` writes it to a file an offline device can `docker load`; `push` sends it to any
//! registry (this one included); `index` joins per-platform pushes under one tag. Version tags
//! (`X.Y.Z…`) never move: a push that would repoint one is refused unless `--force`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use module_image::archive::Format;
use module_image::{Image, Settings};
use oci::{Descriptor, Digest, Platform};
use sync::settings::{Credentials, Limits};
use sync::ParentClient;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(clap::Subcommand)]
enum ImageCommand {
    /// Write the image to a file: `--format docker-archive` for `docker load`, `--format oci`
    /// for `skopeo copy oci-archive:FILE ...`.
    Export(ExportArgs),
    /// Push the image to a registry: REF is `HOST[:PORT]/REPOSITORY[:TAG]` (default tag: the version).
    Push(PushArgs),
    /// Push a multi-platform index over images already in the repository (one per platform).
    Index(IndexArgs),
}

/// What goes into the image.
#[derive(clap::Args)]
struct BuildFlags {
    /// The static binary to package [default: this executable]. The image has no libc: build
    /// it with RUSTFLAGS="-C target-feature=+crt-static" (see image/build.sh).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// The CA bundle to ship at /etc/ssl/certs/ca-certificates.crt (the public roots the
    /// module's TLS clients may use).
    #[arg(long, default_value = module_image::CA_BUNDLE_PATH)]
    ca_bundle: PathBuf,
    /// The platform the binary is for, `os/architecture[/variant]` [default: this machine's].
    #[arg(long)]
    platform: Option<Platform>,
    /// The version label and default tag [default: this binary's version].
    #[arg(long = "image-version", default_value = env!("CARGO_PKG_VERSION"))]
    image_version: String,
    /// The source commit, for the org.opencontainers.image.revision label.
    #[arg(long)]
    revision: Option<String>,
    /// The source repository URL, for the org.opencontainers.image.source label.
    #[arg(long)]
    source: Option<String>,
}

/// How to reach a registry, as `sync` reaches its parent.
#[derive(clap::Args)]
struct RegistryFlags {
    /// Speak plain HTTP to the registry (loopback and test registries only).
    #[arg(long)]
    plain_http: bool,
    /// PEM trust bundle for the registry's TLS certificate (default: public web roots).
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Registry credentials NAME:PASSWORD (prefer the environment variable: argv is visible to `ps`).
    #[arg(long, env = "CONNECTED_REGISTRY_IMAGE_CREDS", hide_env_values = true)]
    creds: Option<String>,
    /// Repoint a version tag (X.Y.Z…) that already names another image. Published versions
    /// must never move: use only to repair a broken push.
    #[arg(long)]
    force: bool,
    /// One more tag to set to the same image, e.g. `latest`. Repeatable.
    #[arg(long = "also-tag", value_name = "TAG")]
    also_tags: Vec<String>,
}

#[derive(clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    build: BuildFlags,
    /// The file to write.
    #[arg(short = 'o', long)]
    output: PathBuf,
    #[arg(long, value_enum)]
    format: ArchiveFormat,
    /// NAME:TAG for `docker load` to set. Repeatable [default: connected-registry:VERSION and
    /// connected-registry:latest]; an OCI archive names the first tag only.
    #[arg(long = "tag", value_name = "NAME:TAG")]
    tags: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ArchiveFormat {
    DockerArchive,
    Oci,
}

#[derive(clap::Args)]
struct PushArgs {
    #[command(flatten)]
    build: BuildFlags,
    /// Where to push: `HOST[:PORT]/REPOSITORY[:TAG]`.
    reference: String,
    #[command(flatten)]
    registry: RegistryFlags,
}

#[derive(clap::Args)]
struct IndexArgs {
    /// The index's place: `HOST[:PORT]/REPOSITORY:TAG`.
    reference: String,
    /// A tag or digest in the same repository naming one platform's image. Repeatable.
    #[arg(long = "from", value_name = "TAG", required = true)]
    from: Vec<String>,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// The largest image config `image index` reads to learn a platform.
const MAX_CONFIG_BYTES: usize = 1 << 20;

pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    match args.command {
        ImageCommand::Export(a) => export(a)?,
        ImageCommand::Push(a) => push(a).await?,
        ImageCommand::Index(a) => index(a).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn build(flags: &BuildFlags) -> anyhow::Result<Image> {
    let binary_path = match &flags.binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this executable: pass --binary")?,
    };
    let binary = std::fs::read(&binary_path).with_context(|| {
        format!(
            "cannot read the binary {} (--binary)",
            binary_path.display()
        )
    })?;
    let ca_bundle = std::fs::read(&flags.ca_bundle).with_context(|| {
        format!(
            "cannot read the CA bundle {} (--ca-bundle; Debian's ca-certificates package has one)",
            flags.ca_bundle.display()
        )
    })?;
    let platform = flags
        .platform
        .clone()
        .unwrap_or_else(module_image::elf::this_platform);
    module_image::elf::check(&binary, &platform, &binary_path.display().to_string())
        .map_err(anyhow::Error::msg)?;
    let settings = Settings {
        platform,
        version: flags.image_version.clone(),
        revision: flags.revision.clone(),
        source: flags.source.clone(),
    };
    Ok(Image::build(&binary, &ca_bundle, &settings)?)
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let image = build(&args.build)?;
    let tags = if args.tags.is_empty() {
        let name = module_image::REPOSITORY;
        vec![
            format!("{name}:{}", args.build.image_version),
            format!("{name}:latest"),
        ]
    } else {
        args.tags
    };
    let format = match args.format {
        ArchiveFormat::DockerArchive => Format::DockerArchive,
        ArchiveFormat::Oci => Format::Oci,
    };
    // Written beside the target and renamed, so a failed export leaves no half archive.
    let partial = args.output.with_extension("partial");
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {} (-o)", partial.display()))?;
    let written =
        module_image::archive::write(&image, format, &tags, std::io::BufWriter::new(file))
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(std::fs::rename(&partial, &args.output)?));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("cannot write {}", args.output.display())));
    }
    println!(
        "{} {} {} ({} bytes compressed layer)",
        args.output.display(),
        image.platform,
        image.manifest_digest(),
        image.layer_gzip.len()
    );
    Ok(())
}

/// A parsed push target.
struct Target {
    client: ParentClient,
    repository: String,
    tag: Option<String>,
    force: bool,
    also_tags: Vec<String>,
}

impl Target {
    fn new(reference: &str, flags: &RegistryFlags) -> anyhow::Result<Target> {
        let parsed = deploy_manifests::image::parse(reference);
        let Some(registry) = parsed.registry else {
            bail!("{reference:?} names no registry: write `HOST[:PORT]/REPOSITORY[:TAG]`, e.g. myregistry.azurecr.io/connected-registry:0.1.0");
        };
        if parsed.digest.is_some() {
            bail!(
                "{reference:?}: push to a tag, not a digest (the digest follows from the content)"
            );
        }
        parsed
            .repository
            .parse::<oci::RepoName>()
            .map_err(|e| anyhow::anyhow!("{reference:?}: {e}"))?;
        for tag in parsed.tag.iter().chain(&flags.also_tags) {
            oci::validate_tag(tag).map_err(|e| anyhow::anyhow!("tag {tag:?}: {e}"))?;
        }
        let scheme = if flags.plain_http { "http" } else { "https" };
        let creds = flags
            .creds
            .as_deref()
            .map(str::parse::<Credentials>)
            .transpose()?;
        let client = ParentClient::new(
            &format!("{scheme}://{registry}"),
            creds,
            flags.trust.as_deref(),
            Limits::default(),
        )?;
        Ok(Target {
            client,
            repository: parsed.repository,
            tag: parsed.tag,
            force: flags.force,
            also_tags: flags.also_tags.clone(),
        })
    }

    /// Refuses to repoint a version tag, before anything is uploaded.
    async fn check_tags(&self, tags: &[String], digest: &Digest) -> anyhow::Result<()> {
        for tag in tags.iter().filter(|t| is_version_tag(t)) {
            if self.force {
                continue;
            }
            match self.client.head_manifest(&self.repository, tag).await? {
                Some(existing) if existing != *digest => bail!(
                    "{}:{tag} already names {existing}, not this image ({digest}): a version tag \
                     never moves; publish a new version, or pass --force to repair a broken push",
                    self.repository
                ),
                _ => {}
            }
        }
        Ok(())
    }

    async fn put_manifest(
        &self,
        tags: &[String],
        media_type: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        for tag in tags {
            self.client
                .put_manifest(
                    &self.repository,
                    tag,
                    media_type,
                    bytes::Bytes::copy_from_slice(body),
                )
                .await?;
            println!(
                "{}/{}:{tag} {}",
                self.client.base(),
                self.repository,
                Digest::sha256_of(body)
            );
        }
        Ok(())
    }
}

/// Whether a tag is a release version (`1.2.3`, `1.2.3-amd64`), which must never move.
fn is_version_tag(tag: &str) -> bool {
    let core = tag.split(['-', '+']).next().unwrap_or(tag);
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

async fn push(args: PushArgs) -> anyhow::Result<()> {
    let image = build(&args.build)?;
    let target = Target::new(&args.reference, &args.registry)?;
    let mut tags = vec![target
        .tag
        .clone()
        .unwrap_or_else(|| args.build.image_version.clone())];
    tags.extend(target.also_tags.iter().cloned());
    target.check_tags(&tags, &image.manifest_digest()).await?;
    for (digest, bytes) in [
        (image.config_digest(), &image.config),
        (image.layer_digest(), &image.layer_gzip),
    ] {
        if target
            .client
            .blob_exists(&target.repository, &digest)
            .await?
        {
            continue;
        }
        upload(&target, &digest, bytes).await?;
    }
    target
        .put_manifest(&tags, oci::media_type::OCI_MANIFEST, &image.manifest)
        .await
}

async fn upload(target: &Target, digest: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
    let blob = sync::store::InMemory(bytes::Bytes::copy_from_slice(bytes));
    target
        .client
        .upload_blob(&target.repository, digest, &blob, bytes.len() as u64)
        .await
        .with_context(|| format!("cannot upload blob {digest}"))
}

async fn index(args: IndexArgs) -> anyhow::Result<()> {
    let target = Target::new(&args.reference, &args.registry)?;
    let Some(tag) = target.tag.clone() else {
        bail!(
            "{:?} names no tag: write `HOST[:PORT]/REPOSITORY:TAG`",
            args.reference
        );
    };
    let mut children = Vec::new();
    for from in &args.from {
        children.push(platform_child(&target, from).await?);
    }
    let body = module_image::index::build(&children).map_err(anyhow::Error::msg)?;
    let mut tags = vec![tag];
    tags.extend(target.also_tags.iter().cloned());
    target.check_tags(&tags, &Digest::sha256_of(&body)).await?;
    target
        .put_manifest(&tags, oci::media_type::OCI_INDEX, &body)
        .await
}

/// The descriptor of one platform's image in the repository, its platform read from its config.
async fn platform_child(target: &Target, reference: &str) -> anyhow::Result<Descriptor> {
    let repo = &target.repository;
    let Some(fetched) = target.client.get_manifest(repo, reference).await? else {
        bail!("{repo}:{reference} is not in the registry: push each platform's image first (image push)");
    };
    let manifest = oci::manifest::parse(Some(&fetched.media_type), &fetched.body)
        .with_context(|| format!("{repo}:{reference} is not a manifest"))?;
    let oci::Content::Image { config, .. } = &manifest.content else {
        bail!("{repo}:{reference} is an index, not one platform's image");
    };
    let mut blob = target.client.get_blob(repo, &config.digest, 0).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = target.client.next_chunk(&mut blob).await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_CONFIG_BYTES {
            bail!("{repo}:{reference}: its config is over {MAX_CONFIG_BYTES} bytes, not an image config");
        }
    }
    let platform: Platform = serde_json::from_slice(&bytes)
        .with_context(|| format!("{repo}:{reference}: its config names no platform"))?;
    let mut child = Descriptor::new(
        fetched.media_type,
        fetched.digest,
        fetched.body.len() as u64,
    );
    child.platform = Some(platform);
    Ok(child)
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_tags_are_told_from_moving_ones() {
        for tag in ["0.1.0", "1.2.3-amd64", "10.20.30+build"] {
            assert!(super::is_version_tag(tag), "{tag}");
        }
        for tag in ["latest", "1.2", "v1.2.3", "1.2.x", "main"] {
            assert!(!super::is_version_tag(tag), "{tag}");
        }
    }
}
