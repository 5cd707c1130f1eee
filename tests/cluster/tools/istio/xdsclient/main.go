// Command xdsclient asks a real istiod for the configuration of one proxy, the way an Envoy
// started by pilot-agent would: one ADS stream (go-control-plane's discovery client) over
// istiod's plaintext gRPC port, with the node id and metadata pilot-agent sends. It requests
// CDS and LDS (wildcard), then the ECDS resources the listeners' HTTP filters name, and runs
// the ECDS resources through the istio-agent conversion (istio.io/istio/pkg/wasm
// MaybeConvertWasmExtensionConfig with a LocalFileCache: the remote module is fetched and its
// sha256 compared with the pin, as pilot-agent does before Envoy sees the config).
//
//	xdsclient -addr 127.0.0.1:15010 -node router~10.1.0.9~gw-0.istio-system~istio-system.svc.cluster.local \
//	  -meta '{"NAMESPACE":"istio-system","LABELS":{"istio":"ingressgateway"},...}' -cache DIR
//
// prints one JSON object: {"clusters": [names], "listeners": [Listener JSON], "ecds":
// [TypedExtensionConfig JSON as istiod sent it], "converted": [the same after the agent's
// conversion], "convert_error": "..."}.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"

	// Istio's own proxy extension types, and every Envoy extension type istiod may put in
	// an Any, for protojson
	_ "istio.io/api/envoy/extensions/stats"
	_ "istio.io/istio/pkg/config/xds"
	"istio.io/istio/pkg/log"
	"istio.io/istio/pkg/util/sets"
	"istio.io/istio/pkg/wasm"
)

const (
	typeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
	typeECDS     = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
)

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "xdsclient: "+format+"\n", a...)
	os.Exit(1)
}

type ads struct {
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *core.Node
	first  bool
}

// get sends one request of a type and waits for istiod's response of that type, then ACKs it.
func (a *ads) get(typeURL string, names []string) *discovery.DiscoveryResponse {
	req := &discovery.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names}
	if !a.first {
		req.Node = a.node
		a.first = true
	}
	if err := a.stream.Send(req); err != nil {
		fail("send %s: %v", typeURL, err)
	}
	for {
		resp, err := a.stream.Recv()
		if err != nil {
			fail("recv %s: %v", typeURL, err)
		}
		ack := &discovery.DiscoveryRequest{
			TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce,
			ResourceNames: names,
		}
		if resp.TypeUrl != typeURL {
			ack.ResourceNames = nil
		}
		if err := a.stream.Send(ack); err != nil {
			fail("ack %s: %v", resp.TypeUrl, err)
		}
		if resp.TypeUrl == typeURL {
			return resp
		}
	}
}

// resolver: the registered types; a type this program does not link (an istio-proxy
// extension) is printed as its "@type" only.
type resolver struct{ *protoregistry.Types }

func (r resolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	if mt, err := r.Types.FindMessageByURL(url); err == nil {
		return mt, nil
	}
	return (&emptypb.Empty{}).ProtoReflect().Type(), nil
}

func toJSON(m proto.Message) json.RawMessage {
	b, err := protojson.MarshalOptions{Resolver: resolver{protoregistry.GlobalTypes}}.Marshal(m)
	if err != nil {
		fail("json: %v", err)
	}
	return b
}

// ecdsNames: the names of the extension configs the listeners' HTTP filters load by ECDS.
func ecdsNames(listeners []*listener.Listener) []string {
	names := sets.New[string]()
	for _, l := range listeners {
		chains := append([]*listener.FilterChain{}, l.FilterChains...)
		if l.DefaultFilterChain != nil {
			chains = append(chains, l.DefaultFilterChain)
		}
		for _, fc := range chains {
			for _, f := range fc.Filters {
				tc := f.GetTypedConfig()
				if tc == nil || !tc.MessageIs(&hcm.HttpConnectionManager{}) {
					continue
				}
				h := &hcm.HttpConnectionManager{}
				if err := tc.UnmarshalTo(h); err != nil {
					fail("hcm: %v", err)
				}
				for _, hf := range h.HttpFilters {
					if cd := hf.GetConfigDiscovery(); cd != nil {
						names.Insert(hf.Name)
					}
				}
			}
		}
	}
	return sets.SortedList(names)
}

func main() {
	addr := flag.String("addr", "", "istiod's plaintext xDS address (host:port)")
	nodeID := flag.String("node", "", "node id: <type>~<ip>~<pod>.<ns>~<ns>.svc.<domain>")
	meta := flag.String("meta", "{}", "node metadata (JSON object)")
	cacheDir := flag.String("cache", "", "directory of the Wasm module cache (the agent's)")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of the whole exchange")
	flag.Parse()
	// istio's logs (the wasm cache's fetch errors among them) on stderr, the result on stdout
	lo := log.DefaultOptions()
	lo.OutputPaths, lo.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	if err := log.Configure(lo); err != nil {
		fail("log: %v", err)
	}
	if *addr == "" || *nodeID == "" || *cacheDir == "" {
		fail("usage: xdsclient -addr host:port -node id -meta json -cache dir")
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(*meta), &m); err != nil {
		fail("meta: %v", err)
	}
	md, err := structpb.NewStruct(m)
	if err != nil {
		fail("meta: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail("dial: %v", err)
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		fail("stream: %v", err)
	}
	a := &ads{stream: stream, node: &core.Node{Id: *nodeID, Metadata: md}}

	out := map[string]any{}
	var clusters []string
	for _, r := range a.get(typeCluster, nil).Resources {
		c := &cluster.Cluster{}
		if err := r.UnmarshalTo(c); err != nil {
			fail("cluster: %v", err)
		}
		clusters = append(clusters, c.Name)
	}
	sort.Strings(clusters)
	out["clusters"] = clusters

	var listeners []*listener.Listener
	var ljson []json.RawMessage
	for _, r := range a.get(typeListener, nil).Resources {
		l := &listener.Listener{}
		if err := r.UnmarshalTo(l); err != nil {
			fail("listener: %v", err)
		}
		listeners = append(listeners, l)
		ljson = append(ljson, toJSON(l))
	}
	out["listeners"] = ljson

	names := ecdsNames(listeners)
	out["ecds_names"] = names
	var ecds []*anypb.Any
	if len(names) > 0 {
		ecds = a.get(typeECDS, names).Resources
	}
	var ej, cj []json.RawMessage
	converted := make([]*anypb.Any, len(ecds))
	for i, r := range ecds {
		ej = append(ej, toJSON(r))
		converted[i] = proto.Clone(r).(*anypb.Any)
	}
	out["ecds"] = ej

	opts := wasm.Options{
		PurgeInterval: wasm.DefaultPurgeInterval, ModuleExpiry: wasm.DefaultModuleExpiry,
		// the test's registry and auth server are plain HTTP on loopback
		InsecureRegistries: sets.New("*"),
		HTTPRequestTimeout: 15 * time.Second, HTTPRequestMaxRetries: 2,
	}
	if err := os.MkdirAll(*cacheDir, 0o755); err != nil {
		fail("cache: %v", err)
	}
	cache := wasm.NewLocalFileCache(*cacheDir, opts)
	defer cache.Cleanup()
	if err := wasm.MaybeConvertWasmExtensionConfig(converted, cache); err != nil {
		out["convert_error"] = err.Error()
	}
	for _, r := range converted {
		cj = append(cj, toJSON(r))
	}
	out["converted"] = cj

	b, err := json.Marshal(out)
	if err != nil {
		fail("json: %v", err)
	}
	fmt.Println(string(b))
}
