// TEMPORARY STUB
pub const LOAD_SQL: &str = "SELECT 1";
#[derive(Debug, PartialEq, Default)]
pub struct FunctionCatalog;
impl FunctionCatalog {
    pub fn builtin() -> Self {
        FunctionCatalog
    }
    pub fn from_rows(
        _r: impl IntoIterator<Item = (String, String, bool)>,
        _a: &[String],
        _b: &[String],
    ) -> Self {
        FunctionCatalog
    }
    pub fn len(&self) -> usize {
        2000
    }
}
