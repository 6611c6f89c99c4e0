//! Compiles `dfs.proto` with protox (pure Rust), so the build needs no protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=dfs.proto");
    let fds = protox::compile(["dfs.proto"], ["."])?;
    // Chunk data as `Bytes`, so pieces are sliced, not copied.
    tonic_build::configure()
        .bytes([
            ".dfs.v1.WriteChunkRequest.data",
            ".dfs.v1.ReadChunkReply.data",
        ])
        .compile_fds(fds)?;
    Ok(())
}
