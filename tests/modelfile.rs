//! Modelfiles we write must mean, to Ollama's own reader, exactly what we meant. Checked against an
//! independent port of that reader (`common::modelfile_parser`), not against our own code.

mod common;

use common::modelfile_parser::{create_request, parse};
use ollama_tools::formats::modelfile::{
    Message, Modelfile, ParamError, ParamKind, Parameters, QuoteError, RenderError, param_kind, quote,
};
use serde_json::{Value, json};

const LLAMA3_TEMPLATE: &str = "{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}<|eot_id|>";

const QWEN_TEMPLATE: &str = r#"{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"#;

fn cmd(name: &str, args: &str) -> (String, String) {
    (name.to_string(), args.to_string())
}

/// What the independent reader makes of `written` used as the value of several commands, each
/// followed by another command so that a value swallowing the next line shows.
fn read_in_every_position(written: &str) -> Vec<Result<Vec<(String, String)>, String>> {
    [
        format!("FROM {written}\nSYSTEM after\n"),
        format!("FROM base\nSYSTEM {written}\nPARAMETER seed 1\n"),
        format!("FROM base\nTEMPLATE {written}\n# a comment\nLICENSE after\n"),
        format!("FROM base\nMESSAGE user {written}\nMESSAGE assistant after\n"),
        format!("FROM base\nPARAMETER stop {written}\nPARAMETER stop after\n"),
        // Last thing in the file, without a final newline.
        format!("FROM base\nSYSTEM {written}"),
    ]
    .iter()
    .map(|text| parse(text))
    .collect()
}

fn expected_in_every_position(value: &str) -> Vec<Result<Vec<(String, String)>, String>> {
    vec![
        Ok(vec![cmd("model", value), cmd("system", "after")]),
        Ok(vec![cmd("model", "base"), cmd("system", value), cmd("seed", "1")]),
        Ok(vec![
            cmd("model", "base"),
            cmd("template", value),
            cmd("license", "after"),
        ]),
        Ok(vec![
            cmd("model", "base"),
            cmd("message", &format!("user: {value}")),
            cmd("message", "assistant: after"),
        ]),
        Ok(vec![cmd("model", "base"), cmd("stop", value), cmd("stop", "after")]),
        Ok(vec![cmd("model", "base"), cmd("system", value)]),
    ]
}

/// Either `quote` round-trips `value` through the independent reader in every position, or it
/// refuses and the naive quotings indeed do not survive that reader. Returns whether it was quoted.
fn check_value(value: &str) -> bool {
    let expected = expected_in_every_position(value);
    match quote(value) {
        Ok(written) => {
            assert_eq!(
                read_in_every_position(&written),
                expected,
                "value {value:?} written as {written:?}"
            );
            true
        }
        Err(err) => {
            for naive in [
                value.to_string(),
                format!("\"{value}\""),
                format!("\"\"\"{value}\"\"\""),
            ] {
                assert_ne!(
                    read_in_every_position(&naive),
                    expected,
                    "quote refused {value:?} ({err}) but {naive:?} reads back exactly"
                );
            }
            false
        }
    }
}

#[test]
fn tricky_values_round_trip_or_are_refused() {
    let values = [
        "",
        " ",
        "  ",
        "\t",
        "llama3.2:1b",
        "/models/base with spaces.gguf",
        " leading space",
        "trailing space ",
        "\tleading tab",
        "trailing tab\t",
        "\"",
        "\"\"",
        "\"\"\"",
        "\"\"\"\"",
        "\"\"\"\"\"\"",
        "\"starts with a quote",
        "ends with a quote\"",
        "\"both\"",
        "\"\"two at the start",
        "two at the end\"\"",
        "\"\"both two\"\"",
        "middle \"\"\" triple",
        "\"\"\"x",
        "x\"\"\"",
        "line one\nline two",
        "line ends with triple\"\"\"\nnext",
        "line ends with quote\"\nnext",
        "first\n\"\"\"",
        "\"\"\"\nafter",
        "crlf\r\nline",
        "lone\rcarriage return",
        "trailing newline\n",
        "\nleading newline",
        "\n",
        "\r\n",
        "\n\n\n",
        "tab\tinside",
        "# not a comment",
        "line\n# hash at line start\nFROM evil",
        "line\nPARAMETER stop x",
        "é ü ß 日本語 Ελληνικά",
        "emoji 😀👍🏽 and flags 🇫🇷",
        "backslash \\n is not an escape",
        "<|eot_id|>",
        "<|im_start|>",
        LLAMA3_TEMPLATE,
        QWEN_TEMPLATE,
    ];
    let mut refused = Vec::new();
    for v in values {
        if !check_value(v) {
            refused.push(v);
        }
    }
    // Only the values whose line ends close every quoting are refused.
    assert_eq!(
        refused,
        vec!["line ends with triple\"\"\"\nnext", "\"\"\"\nafter"],
        "refused: {refused:?}"
    );
    // Real chat templates must be writable.
    for t in [LLAMA3_TEMPLATE, QWEN_TEMPLATE] {
        assert!(quote(t).is_ok());
    }
}

#[test]
fn random_values_round_trip_or_are_refused() {
    const TOKENS: &[&str] = &[
        "\"",
        "\"",
        "\"\"",
        "\"\"\"",
        " ",
        " ",
        "\t",
        "\n",
        "\n",
        "\r\n",
        "\r",
        "#",
        "a",
        "b",
        "x y",
        "é",
        "😀",
        "\\",
        "{{ .System }}",
        "FROM x",
        "PARAMETER",
        "MESSAGE user",
        "'",
        "`",
    ];
    let mut rng = common::Rng::new(2026);
    let mut pick = |n: usize| (((rng.next() + 1.0) / 2.0 * n as f32) as usize).min(n - 1);
    let (mut quoted, mut refused) = (0, 0);
    for _ in 0..4000 {
        let len = pick(9);
        let value: String = (0..len).map(|_| TOKENS[pick(TOKENS.len())]).collect();
        if check_value(&value) {
            quoted += 1;
        } else {
            refused += 1;
        }
    }
    // The grammar carries most values; refusals are the exception.
    assert!(quoted > 3 * refused, "quoted {quoted}, refused {refused}");
    assert!(refused > 0, "the alphabet should produce some unquotable values");
}

#[test]
fn characters_the_reader_drops_are_refused_with_their_code_point() {
    for (value, code) in [
        ("zero\u{200d}width joiner", "U+200D"),
        ("\u{feff}bom", "U+FEFF"),
        ("soft\u{ad}hyphen", "U+00AD"),
        ("no\u{a0}break space", "U+00A0"),
        ("ideographic\u{3000}space", "U+3000"),
        ("bell\u{7}", "U+0007"),
        ("nul\u{0}", "U+0000"),
        ("vertical\u{b}tab", "U+000B"),
        ("form\u{c}feed", "U+000C"),
        ("next\u{85}line", "U+0085"),
        ("line\u{2028}separator", "U+2028"),
        ("rtl\u{200f}mark", "U+200F"),
        ("tag\u{e0041}char", "U+E0041"),
        ("private\u{e000}use", "U+E000"),
        ("unassigned\u{378}", "U+0378"),
        ("del\u{7f}", "U+007F"),
    ] {
        let err = quote(value).expect_err(value);
        assert!(matches!(err, QuoteError::Unprintable { .. }), "{value:?}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(code), "{value:?}: {msg}");
        assert!(
            msg.contains("API"),
            "the message should say the API can carry it: {msg}"
        );
        // And the refusal is right: the reader loses the character whatever the quoting.
        check_value(value);
    }
    let err = quote("ok\nsecond line has \u{200b} here").unwrap_err();
    assert!(err.to_string().contains("line 2, column 17"), "{err}");
}

#[test]
fn unquotable_values_say_which_line() {
    let err = quote("keep\nthis \"\"\"\nand this\"\nend").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, QuoteError::Unquotable { triple_line: 2, .. }), "{err:?}");
    assert!(msg.contains("end of line 2"), "{msg}");
    assert!(msg.contains("--out-modelfile"), "{msg}");
}

fn full_modelfile() -> Modelfile {
    let mut parameters = Parameters::default();
    for arg in [
        "temperature=0.6",
        "num_ctx=8192",
        "top_p=0.9",
        "seed=-1",
        "use_mmap=false",
        "stop=<|eot_id|>",
        "stop=end of turn",
        "stop=\n",
        "stop=\"quoted\"",
        "stop= ",
    ] {
        parameters.push_arg(arg).unwrap();
    }
    Modelfile {
        from: "/models/Llama 3.2 1B/base.gguf".into(),
        adapter: Some("/work/out/adapter.gguf".into()),
        parameters,
        template: Some(LLAMA3_TEMPLATE.into()),
        system: Some("You are \"Ada\".\n\nAnswer in \"\"\"triple quotes\"\"\" when asked.\nBe brief.".into()),
        license: Some(
            "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\nLlama 3.2 Version Release Date: September 25, 2024".into(),
        ),
        messages: vec![
            Message {
                role: "system".into(),
                content: "Stay on topic.".into(),
            },
            Message {
                role: "user".into(),
                content: "Say \"hi\"\nthen stop".into(),
            },
            Message {
                role: "assistant".into(),
                content: "".into(),
            },
        ],
        renderer: Some("qwen3-coder".into()),
        parser: Some("qwen3-coder".into()),
    }
}

#[test]
fn full_modelfile_reads_back_as_the_fields_given() {
    let mf = full_modelfile();
    let text = mf.render(None, "templates/Modelfile").unwrap();
    assert!(text.starts_with("# Modelfile generated by ollama-tools\n"), "{text}");
    assert!(text.ends_with('\n'));
    let cmds = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let names: Vec<&str> = cmds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "model",
            "adapter",
            "renderer",
            "parser",
            "temperature",
            "num_ctx",
            "top_p",
            "seed",
            "use_mmap",
            "stop",
            "stop",
            "stop",
            "stop",
            "stop",
            "template",
            "system",
            "license",
            "message",
            "message",
            "message"
        ],
        "{text}"
    );
    let req = create_request(&cmds).unwrap();
    let expected = json!({
        "from": mf.from,
        "adapters": [mf.adapter.as_ref().unwrap()],
        "renderer": "qwen3-coder",
        "parser": "qwen3-coder",
        "parameters": Value::Object(mf.parameters.to_json()),
        "template": mf.template.as_ref().unwrap(),
        "system": mf.system.as_ref().unwrap(),
        "license": [mf.license.as_ref().unwrap()],
        "messages": mf.messages,
    });
    assert_eq!(req, expected, "{text}");
    assert_eq!(
        req["parameters"]["stop"],
        json!(["<|eot_id|>", "end of turn", "\n", "\"quoted\"", " "])
    );
    assert_eq!(req["parameters"]["temperature"], json!(0.6));
    assert_eq!(req["parameters"]["num_ctx"], json!(8192));
}

#[test]
fn minimal_modelfile_has_no_blank_lines() {
    let mf = Modelfile {
        from: "llama3.2".into(),
        ..Default::default()
    };
    let text = mf.render(None, "templates/Modelfile").unwrap();
    assert!(!text.contains("\n\n"), "{text:?}");
    assert_eq!(
        text.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(),
        ["FROM llama3.2"]
    );
    assert_eq!(
        create_request(&parse(&text).unwrap()).unwrap(),
        json!({"from": "llama3.2"})
    );

    let mf = Modelfile {
        adapter: Some("/a.gguf".into()),
        system: Some(String::new()),
        ..mf
    };
    let text = mf.render(None, "templates/Modelfile").unwrap();
    assert!(!text.contains("\n\n"), "{text:?}");
    // An empty SYSTEM is written: it clears the base model's system prompt.
    assert_eq!(
        create_request(&parse(&text).unwrap()).unwrap(),
        json!({"from": "llama3.2", "adapters": ["/a.gguf"], "system": ""})
    );
}

#[test]
fn render_refuses_what_a_modelfile_cannot_carry() {
    let mut mf = Modelfile {
        from: "base".into(),
        system: Some("bad\u{200d}".into()),
        ..Default::default()
    };
    let err = mf.render(None, "templates/Modelfile").unwrap_err();
    assert!(matches!(err, RenderError::Quote { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("templates/Modelfile line") && msg.contains("U+200D"),
        "{msg}"
    );

    mf.system = None;
    mf.messages = vec![Message {
        role: "tool".into(),
        content: "{}".into(),
    }];
    let msg = mf.render(None, "templates/Modelfile").unwrap_err().to_string();
    assert!(
        msg.contains("\"tool\"") && msg.contains("system, user or assistant"),
        "{msg}"
    );
}

#[test]
fn user_template_and_its_errors() {
    let mf = full_modelfile();
    let src = "FROM {{ from | quote }}\n{% for p in parameters if p.name == 'stop' %}PARAMETER stop {{ p.value | quote }}\n{% endfor %}SYSTEM {{ system | quote }}\n";
    let text = mf.render(Some(src), "my.Modelfile.j2").unwrap();
    let req = create_request(&parse(&text).unwrap()).unwrap();
    assert_eq!(req["from"], json!(mf.from));
    assert_eq!(req["system"], json!(mf.system.as_ref().unwrap()));
    assert_eq!(
        req["parameters"],
        json!({"stop": ["<|eot_id|>", "end of turn", "\n", "\"quoted\"", " "]})
    );

    let err = mf
        .render(Some("FROM {{ from | quote }\n"), "my.Modelfile.j2")
        .unwrap_err();
    assert!(matches!(err, RenderError::Syntax { .. }), "{err:?}");
    assert!(err.to_string().contains("my.Modelfile.j2"), "{err}");

    let err = mf.render(Some("{% if from %}\nFROM x\n"), "unclosed.j2").unwrap_err();
    assert!(err.to_string().contains("unclosed.j2"), "{err}");

    // A misspelt variable fails instead of writing nothing.
    let err = mf.render(Some("FROM {{ form }}\n"), "typo.j2").unwrap_err();
    assert!(err.to_string().contains("typo.j2"), "{err}");

    // Quoting an absent value is an error that says how to guard it.
    let bare = Modelfile {
        from: "x".into(),
        ..Default::default()
    };
    let err = bare
        .render(Some("SYSTEM {{ system | quote }}\n"), "none.j2")
        .unwrap_err();
    assert!(err.to_string().contains("is not none"), "{err}");
}

#[test]
fn parameter_arguments() {
    assert_eq!(param_kind("num_ctx"), Some(ParamKind::Int));
    assert_eq!(param_kind("min_p"), Some(ParamKind::Float));
    assert_eq!(param_kind("use_mmap"), Some(ParamKind::Bool));
    assert_eq!(param_kind("stop"), Some(ParamKind::StrList));
    assert_eq!(param_kind("mirostat"), None);

    let mut p = Parameters::default();
    assert!(p.is_empty());
    for arg in [
        "num_ctx=4096",
        "temperature=.5",
        "top_k=+40",
        "use_mmap=T",
        "stop=a=b",
        "stop=",
        "min_p=1e-3",
    ] {
        p.push_arg(arg).unwrap_or_else(|e| panic!("{arg}: {e}"));
    }
    p.push("temperature", "0.7").unwrap();
    assert_eq!(
        Value::Object(p.to_json()),
        json!({"num_ctx": 4096, "temperature": 0.7, "top_k": 40, "use_mmap": true, "stop": ["a=b", ""], "min_p": 0.001})
    );
    assert_eq!(p.get("num_ctx"), Some(&json!(4096)));

    let err = |arg: &str| Parameters::default().push_arg(arg).unwrap_err();
    let e = err("temprature=0.7");
    assert!(matches!(e, ParamError::Unknown { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("\"temprature\"") && msg.contains("temperature") && msg.contains("num_ctx"),
        "{msg}"
    );

    let msg = err("mirostat=2").to_string();
    assert!(
        msg.contains("Ollama no longer accepts") && msg.contains("mirostat"),
        "{msg}"
    );
    for removed in [
        "tfs_z=1",
        "penalize_newline=true",
        "numa=true",
        "use_mlock=true",
        "low_vram=1",
    ] {
        assert!(matches!(err(removed), ParamError::Removed { .. }), "{removed}");
    }

    let msg = err("num_ctx=4k").to_string();
    assert!(
        msg.contains("num_ctx") && msg.contains("\"4k\"") && msg.contains("whole number") && msg.contains("4096"),
        "{msg}"
    );
    assert!(matches!(err("num_ctx=4096.0"), ParamError::BadValue { .. }));
    assert!(matches!(err("seed=99999999999999999999"), ParamError::BadValue { .. }));

    let msg = err("temperature=warm").to_string();
    assert!(
        msg.contains("temperature") && msg.contains("\"warm\"") && msg.contains("floating-point"),
        "{msg}"
    );
    assert!(
        matches!(err("temperature=1e39"), ParamError::BadValue { .. }),
        "beyond float32: ParseFloat's ErrRange"
    );
    assert!(matches!(err("temperature=0x1p-2"), ParamError::BadValue { .. }));

    let msg = err("use_mmap=yes").to_string();
    assert!(
        msg.contains("use_mmap") && msg.contains("\"yes\"") && msg.contains("true or false"),
        "{msg}"
    );

    for non_finite in ["temperature=NaN", "temperature=inf", "top_p=-Infinity"] {
        let e = err(non_finite);
        assert!(matches!(e, ParamError::NonFinite { .. }), "{non_finite}: {e:?}");
        assert!(e.to_string().contains("finite"), "{e}");
    }

    let msg = err("temperature").to_string();
    assert!(msg.contains("NAME=VALUE") && msg.contains("temperature=0.7"), "{msg}");
    assert!(matches!(err("=1"), ParamError::NotKeyValue { .. }));
}

#[test]
fn show_text_is_read_back_typed() {
    let text = "stop                           \"<|start_header_id|>\"\n\
                stop                           \"<|end_header_id|>\"\n\
                stop                           \"<|eot_id|>\"\n\
                temperature                    0.6\n\
                num_ctx                        4096\n\
                top_p                          0.9";
    let p = Parameters::from_show_text(text).unwrap();
    assert_eq!(
        Value::Object(p.to_json()),
        json!({"stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "temperature": 0.6,
               "num_ctx": 4096, "top_p": 0.9})
    );

    let text = "stop                           \"\\n\"\n\
                stop                           \"caf\\u00e9 \\\"x\\\" \\t\\\\\"\n\
                stop                           \"smile \\U0001f600 and é\"\n\
                stop                           \"\\x1b[0m\\a\"\n\
                seed                           1e+06\n\
                use_mmap                       false\n\
                mirostat                       0\n\
                a_new_option_with_a_long_name_beyond_thirty 3\n\
                another_new_option             \"text\"\n\
                another_new_option             \"more\"\n";
    let p = Parameters::from_show_text(text).unwrap();
    assert_eq!(
        Value::Object(p.to_json()),
        json!({"stop": ["\n", "café \"x\" \t\\", "smile 😀 and é", "\u{1b}[0m\u{7}"], "seed": 1000000,
               "use_mmap": false, "a_new_option_with_a_long_name_beyond_thirty": 3,
               "another_new_option": ["text", "more"]})
    );

    assert!(Parameters::from_show_text("").unwrap().is_empty());
    for bad in [
        "num_ctx                        \"4096\"",
        "stop                           \"open",
        "stop \"\\q\"",
        "num_ctx 40.5",
        "temperature",
    ] {
        let e = Parameters::from_show_text(bad).unwrap_err();
        assert!(matches!(e, ParamError::ShowText { line: 1, .. }), "{bad}: {e:?}");
    }
}

#[test]
fn params_layer_overlay_and_rendering() {
    let layer = json!({"stop": "<|eot_id|>", "num_ctx": 8192.0, "temperature": 0.6, "penalize_newline": false,
                       "custom": "kept"});
    let mut base = Parameters::from_json(layer.as_object().unwrap());
    assert_eq!(
        Value::Object(base.to_json()),
        json!({"stop": ["<|eot_id|>"], "num_ctx": 8192, "temperature": 0.6, "custom": "kept"})
    );
    let mut user = Parameters::default();
    user.push_arg("stop=</s>").unwrap();
    user.push_arg("stop=<|end|>").unwrap();
    user.push_arg("seed=42").unwrap();
    base.overlay(&user);
    assert_eq!(
        Value::Object(base.to_json()),
        json!({"stop": ["</s>", "<|end|>"], "num_ctx": 8192, "temperature": 0.6, "custom": "kept", "seed": 42})
    );

    // Unknown names the server reported are written as given; the rest reads back typed.
    let mf = Modelfile {
        from: "base".into(),
        parameters: base.clone(),
        ..Default::default()
    };
    let text = mf.render(None, "templates/Modelfile").unwrap();
    assert!(text.contains("PARAMETER custom kept\n"), "{text}");
    let without_custom: Vec<_> = parse(&text)
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != "custom")
        .collect();
    let mut expected = base.to_json();
    expected.remove("custom");
    assert_eq!(
        create_request(&without_custom).unwrap()["parameters"],
        Value::Object(expected)
    );
}

#[test]
fn independent_reader_matches_parser_go_on_known_cases() {
    // Cases from Ollama's parser tests, so the reader the other tests trust is itself checked.
    assert_eq!(
        parse("FROM foo\nADAPTER adapter1\nLICENSE MIT\nPARAMETER param1 value1\nTEMPLATE template1\n").unwrap(),
        vec![
            cmd("model", "foo"),
            cmd("adapter", "adapter1"),
            cmd("license", "MIT"),
            cmd("param1", "value1"),
            cmd("template", "template1")
        ]
    );
    assert_eq!(
        parse("FROM foo\nTEMPLATE \"\"\"{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}\"\"\"   \n").unwrap()[1],
        cmd("template", "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}")
    );
    assert_eq!(
        parse("FROM foo\nSYSTEM  \"\"\"   spaces kept inside   \"\"\"\n").unwrap()[1],
        cmd("system", "   spaces kept inside   ")
    );
    assert_eq!(
        parse("from foo\nmessage user Hey there!\n").unwrap()[1],
        cmd("message", "user: Hey there!")
    );
    assert!(parse("FROM foo\nMESSAGE badrole Hey\n").is_err());
    assert!(parse("FROM foo\nBADCOMMAND x\n").is_err());
    assert!(parse("SYSTEM no from\n").is_err());
    assert!(parse("FROM foo\nSYSTEM \"open\n").is_err());
    // Windows line endings and a byte-order mark.
    assert_eq!(
        parse("\u{feff}FROM foo\r\nSYSTEM bar\r\n").unwrap(),
        vec![cmd("model", "foo"), cmd("system", "bar")]
    );
    // Dropped characters vanish silently: the hazard `quote` guards against.
    assert_eq!(parse("FROM foo\nSYSTEM a\u{200d}b\n").unwrap()[1], cmd("system", "ab"));
    // A line ending in """ closes a """ value early; the rest is read as commands.
    assert!(parse("FROM foo\nSYSTEM \"\"\"a\"\"\"\nb\"\"\"\n").is_err());
}
