// Command render renders a Helm chart the way `helm template` does, for the subset of Helm
// that charts/trident uses: Go text/template with the sprig v3 functions, Helm's own
// functions (include, tpl, required, toYaml, fromYaml, toJson, fromJson, lookup as empty),
// .Values (values.yaml deep-merged with -f files and --set overrides), .Release, .Chart,
// .Capabilities (a fixed Kubernetes version), .Template, .Files (Get, GetBytes, Glob, Lines)
// and _*.tpl partials. NOTES.txt is executed (so its errors count) but printed only with
// --notes. Output: manifests in Helm's install order, each headed by "# Source: …".
//
// There is no helm binary in this environment (it is not packaged by Debian or PyPI, and
// no Go module proxy is reachable); this is built offline against Debian's Go packages
// (scripts/check-chart.sh). It exists so the chart can be tested here; the chart itself
// uses only standard Helm functions, so `helm template` renders it the same way.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	var valueFiles, sets multiFlag
	name := flag.String("name", "trident", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "v1.31.0", "Kubernetes version for .Capabilities")
	notes := flag.Bool("notes", false, "print the rendered NOTES.txt after the manifests")
	flag.Var(&valueFiles, "f", "values file (repeatable; later files win)")
	flag.Var(&sets, "set", "key.path=value override (repeatable)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: render [--name N] [--namespace NS] [-f values.yaml]... [--set a.b=c]... CHART_DIR")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), options{
		release: *name, namespace: *namespace, kubeVersion: *kubeVersion,
		valueFiles: valueFiles, sets: sets, notes: *notes,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

type options struct {
	release, namespace, kubeVersion string
	valueFiles, sets                []string
	notes                           bool
}

// Files is Helm's .Files: every file of the chart outside templates/, by relative path.
type Files map[string][]byte

func (f Files) Get(name string) string      { return string(f[name]) }
func (f Files) GetBytes(name string) []byte { return f[name] }
func (f Files) Lines(name string) []string {
	s := strings.TrimSuffix(string(f[name]), "\n")
	if s == "" {
		return []string{}
	}
	return strings.Split(s, "\n")
}
func (f Files) Glob(pattern string) Files {
	out := Files{}
	for k, v := range f {
		if ok, _ := path.Match(pattern, k); ok {
			out[k] = v
		}
	}
	return out
}

type apiVersions []string

func (a apiVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

func render(chartDir string, o options) (string, error) {
	chartYAML, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	chartMeta, err := parseYAML(chartYAML)
	if err != nil {
		return "", fmt.Errorf("Chart.yaml: %w", err)
	}
	chart := map[string]interface{}{}
	for k, v := range chartMeta.(map[string]interface{}) {
		chart[helmMetaKey(k)] = v
	}
	chartName, _ := chart["Name"].(string)
	if chartName == "" {
		return "", errors.New("Chart.yaml: name is required")
	}

	values := map[string]interface{}{}
	for _, f := range append([]string{filepath.Join(chartDir, "values.yaml")}, o.valueFiles...) {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		v, err := parseYAML(b)
		if err != nil {
			return "", fmt.Errorf("%s: %w", f, err)
		}
		if v == nil {
			continue
		}
		m, ok := v.(map[string]interface{})
		if !ok {
			return "", fmt.Errorf("%s: values must be a mapping", f)
		}
		values = mergeValues(values, m)
	}
	for _, s := range o.sets {
		if err := applySet(values, s); err != nil {
			return "", err
		}
	}

	ignore := readHelmignore(chartDir)
	files := Files{}
	var templates []string
	err = filepath.Walk(chartDir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(chartDir, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if ignored(ignore, rel, info.IsDir()) {
			if info.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if info.IsDir() {
			return nil
		}
		if strings.HasPrefix(rel, "templates/") {
			templates = append(templates, rel)
			return nil
		}
		if rel == "Chart.yaml" || rel == "values.yaml" || rel == "values.schema.json" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[rel] = b
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(templates)

	root := template.New("gotpl")
	root.Option("missingkey=zero")
	root.Funcs(funcMap(root))
	for _, t := range templates {
		b, err := os.ReadFile(filepath.Join(chartDir, filepath.FromSlash(t)))
		if err != nil {
			return "", err
		}
		if _, err := root.New(chartName + "/" + t).Parse(string(b)); err != nil {
			return "", fmt.Errorf("parse error in %q: %s", chartName+"/"+t, cleanErr(err))
		}
	}

	top := map[string]interface{}{
		"Values": values,
		"Chart":  chart,
		"Release": map[string]interface{}{
			"Name": o.release, "Namespace": o.namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{
				"Version": o.kubeVersion, "GitVersion": o.kubeVersion,
				"Major": strings.TrimPrefix(strings.Split(o.kubeVersion, ".")[0], "v"),
				"Minor": strings.Split(o.kubeVersion, ".")[1],
			},
			"APIVersions": apiVersions{"v1", "apps/v1", "policy/v1"},
		},
		"Files": files,
	}

	type doc struct {
		source, body, kind string
		order, seq         int
	}
	var docs []doc
	var notesOut string
	for _, t := range templates {
		base := path.Base(t)
		if strings.HasPrefix(base, "_") {
			continue
		}
		name := chartName + "/" + t
		vals := map[string]interface{}{}
		for k, v := range top {
			vals[k] = v
		}
		vals["Template"] = map[string]interface{}{"Name": name, "BasePath": chartName + "/templates"}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, vals); err != nil {
			return "", cleanErr(err)
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if base == "NOTES.txt" {
			notesOut = text
			continue
		}
		for _, part := range splitDocs(text) {
			if strings.TrimSpace(stripComments(part)) == "" {
				continue
			}
			kind := kindOf(part)
			docs = append(docs, doc{source: name, body: part, kind: kind, order: installOrder(kind), seq: len(docs)})
		}
	}
	sort.SliceStable(docs, func(i, j int) bool {
		if docs[i].order != docs[j].order {
			return docs[i].order < docs[j].order
		}
		return docs[i].seq < docs[j].seq
	})
	var out strings.Builder
	for _, d := range docs {
		out.WriteString("---\n# Source: " + d.source + "\n")
		out.WriteString(strings.Trim(d.body, "\n") + "\n")
	}
	if o.notes && notesOut != "" {
		out.WriteString("\nNOTES:\n" + notesOut)
	}
	return out.String(), nil
}

// helmMetaKey maps Chart.yaml keys to the field names of Helm's chart.Metadata.
func helmMetaKey(k string) string {
	switch k {
	case "apiVersion":
		return "APIVersion"
	case "appVersion":
		return "AppVersion"
	case "kubeVersion":
		return "KubeVersion"
	}
	return strings.ToUpper(k[:1]) + k[1:]
}

func funcMap(root *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = func(v interface{}) string {
		b, err := toYAML(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(b), "\n")
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		v, err := parseYAML([]byte(s))
		if err != nil {
			return map[string]interface{}{"Error": err.Error()}
		}
		m, _ := v.(map[string]interface{})
		if m == nil {
			m = map[string]interface{}{}
		}
		return m
	}
	f["toJson"] = func(v interface{}) string {
		b, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(b)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	// `helm template` has no cluster: lookup finds nothing.
	f["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	return f
}

// toYAML is sigs.k8s.io/yaml's Marshal (what Helm's toYaml calls): JSON first, then YAML.
func toYAML(v interface{}) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return nil, err
	}
	return yaml.Marshal(obj)
}

// parseYAML reads YAML the way Helm reads values (sigs.k8s.io/yaml): via JSON, so maps have
// string keys and every number is a float64.
func parseYAML(b []byte) (interface{}, error) {
	var raw interface{}
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	j, err := json.Marshal(jsonable(raw))
	if err != nil {
		return nil, err
	}
	var out interface{}
	if err := json.Unmarshal(j, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func jsonable(v interface{}) interface{} {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, val := range t {
			m[fmt.Sprint(k)] = jsonable(val)
		}
		return m
	case []interface{}:
		for i := range t {
			t[i] = jsonable(t[i])
		}
		return t
	}
	return v
}

// mergeValues is Helm's coalescing of user values over chart defaults: maps merge key by
// key, anything else replaces, and null deletes the key.
func mergeValues(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sm, sok := v.(map[string]interface{})
		dm, dok := dst[k].(map[string]interface{})
		if sok && dok {
			dst[k] = mergeValues(dm, sm)
		} else {
			dst[k] = v
		}
	}
	return dst
}

// applySet handles --set a.b.c=value (no list indices): true/false become booleans,
// integers int64 (as Helm's strvals does), "null" deletes, anything else is a string.
func applySet(values map[string]interface{}, s string) error {
	eq := strings.Index(s, "=")
	if eq <= 0 {
		return fmt.Errorf("--set %q: expected key=value", s)
	}
	keys := strings.Split(s[:eq], ".")
	raw := s[eq+1:]
	var v interface{} = raw
	switch {
	case raw == "true":
		v = true
	case raw == "false":
		v = false
	case raw == "null":
		v = nil
	default:
		if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
			v = n
		}
	}
	m := values
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[k] = next
		}
		m = next
	}
	last := keys[len(keys)-1]
	if v == nil {
		delete(m, last)
	} else {
		m[last] = v
	}
	return nil
}

func readHelmignore(dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, ".helmignore"))
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// ignored applies the .helmignore forms this chart uses: "dir/" and basename globs.
func ignored(patterns []string, rel string, isDir bool) bool {
	if rel == ".helmignore" {
		return true
	}
	for _, p := range patterns {
		if strings.HasSuffix(p, "/") {
			if isDir && (rel == strings.TrimSuffix(p, "/") || path.Base(rel) == strings.TrimSuffix(p, "/")) {
				return true
			}
			continue
		}
		if ok, _ := path.Match(p, path.Base(rel)); ok {
			return true
		}
		if ok, _ := path.Match(p, rel); ok {
			return true
		}
	}
	return false
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

func splitDocs(s string) []string { return docSep.Split(s, -1) }

func stripComments(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

var kindRe = regexp.MustCompile(`(?m)^kind:\s*(\S+)`)

func kindOf(s string) string {
	if m := kindRe.FindStringSubmatch(s); m != nil {
		return m[1]
	}
	return ""
}

// Helm's InstallOrder (pkg/releaseutil/kind_sorter.go); unknown kinds (CRs) go last.
var order = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService",
}

func installOrder(kind string) int {
	for i, k := range order {
		if k == kind {
			return i
		}
	}
	return len(order)
}

var execErr = regexp.MustCompile(`^template: (\S+?):(\d+):(\d+): executing "[^"]*" at <[^>]*>: error calling \w+: `)

// cleanErr turns text/template's error into Helm's "execution error at (file:line:col): msg".
func cleanErr(err error) error {
	s := err.Error()
	if m := execErr.FindStringSubmatch(s); m != nil {
		// Nested includes repeat the prefix; keep the innermost message.
		msg := s[len(m[0]):]
		for {
			n := execErr.FindStringSubmatch(msg)
			if n == nil {
				break
			}
			msg = msg[len(n[0]):]
		}
		return fmt.Errorf("execution error at (%s:%s:%s): %s", m[1], m[2], m[3], msg)
	}
	return errors.New(s)
}
