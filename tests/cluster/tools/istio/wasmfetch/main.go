// Command wasmfetch fetches a Wasm module through Istio's own fetch code, the module cache of
// istio-agent (istio.io/istio/pkg/wasm: LocalFileCache.Get, its HTTP fetcher and its OCI
// image fetcher), with a pin (the sha256 a WasmPlugin or an EnvoyFilter's remote source
// carries), as pilot-agent does before Envoy loads a remote module.
//
//	wasmfetch -url http://127.0.0.1:8081/edge/module.wasm -sha256 <hex>
//	wasmfetch -layout DIR -sha256 <hex>   serves the OCI image layout DIR (written by
//	    plugin/tools/module_pins.py) from go-containerregistry's registry in process and
//	    fetches oci://<registry>/tollgate/filter:test
//
// prints one JSON line: {"url": ..., "ok": true, "file_sha256": <hex of the cached file>}
// or {"url": ..., "ok": false, "error": <the cache's error>}.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"istio.io/istio/pkg/log"
	"istio.io/istio/pkg/util/sets"
	"istio.io/istio/pkg/wasm"
)

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "wasmfetch: "+format+"\n", a...)
	os.Exit(1)
}

// serveLayout pushes the single image of an OCI layout to an in-process registry and returns
// its oci:// URL.
func serveLayout(dir string) (string, func()) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		fail("layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		fail("index: %v (%d manifests)", err, len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		fail("image: %v", err)
	}
	srv := httptest.NewServer(registry.New())
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, err := name.ParseReference(host+"/tollgate/filter:test", name.Insecure)
	if err != nil {
		fail("ref: %v", err)
	}
	if err := remote.Write(ref, img); err != nil {
		fail("push: %v", err)
	}
	return "oci://" + host + "/tollgate/filter:test", srv.Close
}

func main() {
	url := flag.String("url", "", "http(s):// or oci:// URL of the module")
	dir := flag.String("layout", "", "OCI image layout to serve from an in-process registry")
	pin := flag.String("sha256", "", "the pin (hex sha256)")
	flag.Parse()
	if (*url == "") == (*dir == "") {
		fail("usage: wasmfetch (-url URL | -layout DIR) -sha256 HEX")
	}
	lo := log.DefaultOptions()
	lo.OutputPaths, lo.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	if err := log.Configure(lo); err != nil {
		fail("log: %v", err)
	}
	if *dir != "" {
		u, stop := serveLayout(*dir)
		defer stop()
		*url = u
	}
	cacheDir, err := os.MkdirTemp("", "wasmfetch-")
	if err != nil {
		fail("tmp: %v", err)
	}
	defer os.RemoveAll(cacheDir)

	cache := wasm.NewLocalFileCache(cacheDir, wasm.Options{
		PurgeInterval: wasm.DefaultPurgeInterval, ModuleExpiry: wasm.DefaultModuleExpiry,
		// plain HTTP on loopback (the in-process registry, the auth server's module port)
		InsecureRegistries: sets.New("*"),
		HTTPRequestTimeout: 15 * time.Second, HTTPRequestMaxRetries: 2,
	})
	defer cache.Cleanup()
	out := map[string]any{"url": *url}
	path, err := cache.Get(*url, wasm.GetOptions{
		Checksum: *pin, ResourceName: "tollgate-filter", ResourceVersion: "1",
		RequestTimeout: 30 * time.Second, PullPolicy: wasm.IfNotPresent,
	})
	if err != nil {
		out["ok"], out["error"] = false, err.Error()
	} else {
		b, err := os.ReadFile(path)
		if err != nil {
			fail("read %s: %v", path, err)
		}
		sum := sha256.Sum256(b)
		out["ok"], out["file_sha256"] = true, hex.EncodeToString(sum[:])
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
