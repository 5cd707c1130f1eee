// Command istio_oci pushes an OCI image layout written by plugin/tools/module_pins.py to an
// in-process registry and pulls it back the way Istio's Wasm image fetcher does
// (istio/istio pkg/wasm/imagefetcher.go, with the same go-containerregistry calls): the
// manifest digest Istio compares with a WasmPlugin's sha256, and the plugin.wasm of the
// compat variant (an OCI manifest whose last layer is application/vnd.oci.image.layer.v1.tar+gzip).
//
//	go run . <layout-dir>   prints {"digest": "<hex>", "wasm_sha256": "<hex>", "manifest_media_type": ...}
package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: istio_oci <oci-layout-dir>")
	}
	idx, err := layout.ImageIndexFromPath(os.Args[1])
	if err != nil {
		fail("layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		fail("index: %v (%d manifests)", err, len(im.Manifests))
	}
	local, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		fail("image: %v", err)
	}
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/tollgate/filter:test", name.Insecure)
	if err != nil {
		fail("ref: %v", err)
	}
	if err := remote.Write(ref, local); err != nil {
		fail("push: %v", err)
	}

	// As Istio's ImageFetcher.PrepareFetch: remote.Get, desc.Image, img.Digest.
	desc, err := remote.Get(ref)
	if err != nil {
		fail("could not fetch manifest: %v", err)
	}
	img, err := desc.Image()
	if err != nil {
		fail("could not fetch image: %v", err)
	}
	d, _ := img.Digest()
	manifest, err := img.Manifest()
	if err != nil {
		fail("manifest: %v", err)
	}
	if manifest.MediaType == types.DockerManifestSchema2 {
		fail("a Docker manifest: Istio would take the Docker path")
	}
	// extractOCIStandardImage: the last layer, application/vnd.oci.image.layer.v1.tar+gzip.
	layers, err := img.Layers()
	if err != nil || len(layers) == 0 {
		fail("layers: %v", err)
	}
	layer := layers[len(layers)-1]
	mt, err := layer.MediaType()
	if err != nil || mt != types.OCILayer {
		fail("invalid media type %s (expect %s)", mt, types.OCILayer)
	}
	r, err := layer.Compressed()
	if err != nil {
		fail("layer: %v", err)
	}
	defer r.Close()
	gr, err := gzip.NewReader(r)
	if err != nil {
		fail("failed to parse layer as tar.gz: %v", err)
	}
	tr := tar.NewReader(gr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			fail("plugin.wasm not found in the archive")
		} else if err != nil {
			fail("tar: %v", err)
		}
		if filepath.Base(h.Name) == "plugin.wasm" {
			b := make([]byte, h.Size)
			if _, err := io.ReadFull(tr, b); err != nil {
				fail("read: %v", err)
			}
			sum := sha256.Sum256(b)
			out, _ := json.Marshal(map[string]string{
				"digest":              d.Hex,
				"wasm_sha256":         hex.EncodeToString(sum[:]),
				"manifest_media_type": string(manifest.MediaType),
			})
			fmt.Println(string(out))
			return
		}
	}
}
