//! Compiles `dfs.proto` with protox (pure Rust), so the build needs no protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=dfs.proto");
    let fds = protox::compile(["dfs.proto"], ["."])?;
    tonic_build::configure().compile_fds(fds)?;
    Ok(())
}
