//! Whatever text a user's Dockerfile holds, the parser and the planner answer with a result,
//! never a panic: the build context is user input.

use std::collections::BTreeMap;

use proptest::prelude::*;

const PIECES: &[&str] = &[
    "FROM ",
    "busybox",
    " AS ",
    "x",
    "\n",
    "RUN ",
    "COPY ",
    "--from=",
    "0",
    "ENV ",
    "A=",
    "\"",
    "'",
    "\\",
    "`",
    "${",
    "}",
    ":-",
    ":?",
    "$",
    "[",
    "]",
    "\"a\",",
    "ARG ",
    "# escape=`\n",
    "#",
    " ",
    "HEALTHCHECK ",
    "CMD ",
    "NONE",
    "<<EOF",
    "=",
    "--platform=",
    "\r\n",
    "ONBUILD ",
];

fn run(text: &str) {
    if let Ok(df) = dcpp_build::parse(text) {
        let mut args = BTreeMap::new();
        args.insert("A".to_string(), "1".to_string());
        for target in [None, Some("x")] {
            if let Ok(p) = dcpp_build::plan(&df, &args, target) {
                for s in &p.stages {
                    let mut scope = p.scope(&["PATH=/bin".into()]);
                    for i in &s.instructions {
                        let _ = scope.step(i);
                        let _ = scope.split("$A ${A:-\"x y\"} '$A'");
                    }
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        run(&s);
    }

    #[test]
    fn dockerfile_shaped_text_never_panics(ix in proptest::collection::vec(0..PIECES.len(), 0..60)) {
        let text: String = ix.into_iter().map(|i| PIECES[i]).collect();
        run(&text);
    }
}
