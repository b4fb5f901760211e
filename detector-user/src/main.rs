use std::path::PathBuf;
fn main() -> anyhow::Result<()> {
    let path = PathBuf::from(std::env::args().nth(1).unwrap());
    let a = detector_user::analyze::analyze_file(&path, &Default::default())?;
    println!("{}", serde_json::to_string_pretty(&a)?);
    Ok(())
}
